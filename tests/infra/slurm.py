"""A real Slurm 22.05 cluster on this machine: one slurmctld, two live slurmd nodes and one DOWN node.

Layout (recipe from shared/reference/test-infra.md):
- nodes ``n1`` and ``n2`` (2 CPUs, 2000 MB each; ``n2`` also has ``gpu:2`` without device files),
  each its own ``slurmd -N`` with its own port; ``n3`` has no slurmd and is configured ``State=DOWN``.
- partitions ``debug`` (default, all nodes), ``long`` (n2, n3; with limits) and ``closed`` (INACTIVE).
- ``CR_Core_Memory`` so ``--mem`` is tracked.

The ``slurm`` fixture starts the daemons and submits the standard job mix (``populate``: running,
pending, held, dependency, array, GPU; ids in ``slurm.jobs``); ``tests/capture_fixtures.py`` uses the
same functions. Its jobs have no time limit, so Slurm cannot estimate when pending ones start.
The ``slurm_backfill`` fixture is a second cluster of the same layout whose backfill scheduler
(``SchedulerType=sched/backfill``, the default, explicit in both) runs every second, filled with
time-limited jobs by ``fill_for_backfill`` so that its pending jobs carry an expected start.
Everything lives in a world-readable temp
dir so the non-root ssh user ``mstest`` can run the client commands with ``SLURM_CONF``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.infra.procs import free_port, start, stop, wait_for

LIVE_NODES = ("n1", "n2")
DOWN_NODE = "n3"
NODE_CPUS = 4  # more than this machine has: SlurmdParameters=config_overrides
NODE_MEM_MB = 4000
SCHED_PARAMS = "sched_interval=1"  # the standard cluster: backfill on its default 30 s interval
# The backfill cluster recomputes expected starts every second, so a test sees them without waiting 30 s.
BACKFILL_PARAMS = "sched_interval=1,bf_interval=1"
FILL_TIME_MIN = 30  # --time of the jobs filling the backfill cluster: pending jobs expect to start then

_CONF = """\
ClusterName=mstest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=2
SchedulerType=sched/backfill
SchedulerParameters={sched_params}
GresTypes=gpu
NodeName=n1 NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus} RealMemory={mem} State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port={n2_port} CPUs={cpus} RealMemory={mem} Gres=gpu:2 State=UNKNOWN
NodeName=n3 NodeAddr=127.0.0.1 Port={n3_port} CPUs={cpus} RealMemory={mem} State=DOWN Reason="no slurmd"
PartitionName=debug Nodes=n1,n2,n3 Default=YES MaxTime=INFINITE State=UP
PartitionName=long Nodes=n2,n3 MaxTime=2-00:00:00 MaxNodes=1 MaxCPUsPerNode=4 DefMemPerCPU=500 State=UP
PartitionName=closed Nodes=n1 MaxTime=01:00:00 State=INACTIVE
"""

# No real GPUs here: slurmd drops file-less GPUs, so two harmless character devices stand in
# (TaskPlugin=task/none: nothing constrains or touches them).
_GRES = "NodeName=n2 Name=gpu File=/dev/null,/dev/zero\n"


class SlurmError(RuntimeError):
    """The test cluster did not come up or a client command failed; the message has the log tail."""


@dataclass
class SlurmCluster:
    conf: Path
    env: dict[str, str]  # {"SLURM_CONF": ...}: add to any client command's environment
    dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)  # in start order
    jobs: PopulatedJobs | None = None  # set by populate(): the standard job mix

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        """Run a Slurm client command against this cluster and return stdout."""
        env = {**os.environ, **self.env}
        res = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=30, check=False)
        if check and res.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def sbatch(
        self,
        name: str = "job",
        cpus: int = 1,
        mem: str | None = None,
        partition: str | None = None,
        extra: Sequence[str] = (),
        command: str = "sleep 86400",  # outlives any test session; teardown scancels
    ) -> str:
        """Submit a batch job; returns its id (``--parsable`` output, cluster suffix dropped)."""
        argv = ["sbatch", "--parsable", "-J", name, "-c", str(cpus), "-o", "/dev/null", "-D", str(self.dir)]
        if mem is not None:
            argv += ["--mem", mem]
        if partition is not None:
            argv += ["-p", partition]
        argv += [*extra, "--wrap", command]
        return self.run(argv).strip().split(";")[0]

    def scancel(self, *job_ids: str) -> None:
        if job_ids:
            self.run(["scancel", *job_ids], check=False)

    def states(self) -> dict[str, str]:
        """job id -> state (%T) of every job in the queue, array ranges as squeue prints them."""
        out = self.run(["squeue", "-h", "-a", "-o", "%i %T"])
        return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())

    def wait_state(self, job_id: str, state: str, timeout: float = 20.0) -> None:
        wait_for(lambda: self.states().get(job_id) == state, timeout, f"job {job_id} to be {state}")

    def wait_reason(self, job_id: str, reason: str, timeout: float = 20.0) -> None:
        """Pending reasons are set by the scheduler pass after submission; wait for the expected one."""

        def check() -> bool:
            out = self.run(["squeue", "-h", "-a", "-j", job_id, "-o", "%r"]).strip()
            return out == reason

        wait_for(check, timeout, f"job {job_id} to pend with reason {reason}")

    def cancel_all(self, timeout: float = 20.0) -> None:
        self.run(["scancel", "--full", "-u", "root"], check=False)
        ids = list(self.states())
        if ids:
            self.run(["scancel", *ids], check=False)
        wait_for(lambda: not self.states(), timeout, "an empty queue")


@dataclass
class PopulatedJobs:
    """Ids of the standard job mix ``populate`` submits."""

    running: dict[str, str]  # name -> id
    pending: str  # waits for Resources
    held: str  # sbatch -H
    dependent: str  # waits on a running job (reason Dependency)
    array: str  # array master id; tasks 1, 2 run, the others pend as "<id>_[3-6%2]"
    all_ids: list[str] = field(default_factory=list)


def populate(c: SlurmCluster) -> PopulatedJobs:
    """Running/pending/held/dependency/array/GPU jobs: n1 2/4 CPUs used, n2 3/4 (one GPU), n3 down.

    The pending job asks for a whole node's CPUs, so it waits for Resources.
    """
    running = {
        "g101_bowtie2_alice": c.sbatch("g101_bowtie2_alice", cpus=1, mem="500M", extra=["-w", "n1"]),
        "odd | name  with spaces": c.sbatch("odd | name  with spaces", cpus=1, mem="1G", extra=["-w", "n1"]),
        "gpu_job": c.sbatch("gpu_job", cpus=1, partition="long", extra=["--gres=gpu:1", "-w", "n2"]),
    }
    for jid in running.values():
        c.wait_state(jid, "RUNNING")
    array = c.sbatch("arr", cpus=1, mem="100M", extra=["--array=1-6%2", "-w", "n2"])
    c.wait_state(f"{array}_1", "RUNNING")
    c.wait_state(f"{array}_2", "RUNNING")
    pending = c.sbatch("g102_bwa_mem_bob", cpus=NODE_CPUS, mem="1G")
    held = c.sbatch("held_one", cpus=1, extra=["-H"])
    after = f"--dependency=afterok:{running['g101_bowtie2_alice']}"
    dependent = c.sbatch("after_alice", cpus=1, extra=[after])
    c.wait_reason(pending, "Resources")
    c.wait_reason(dependent, "Dependency")
    c.wait_reason(held, "JobHeldUser")
    ids = [*running.values(), array, pending, held, dependent]
    c.jobs = PopulatedJobs(running, pending, held, dependent, array, ids)
    return c.jobs


@dataclass
class BackfillJobs:
    """Ids of the jobs ``fill_for_backfill`` submits."""

    filling: list[str]  # one 4-CPU job per live node, --time FILL_TIME_MIN
    whole_node: str  # 4 CPUs: pends for Resources, expected when the first filling job ends
    one_core: str  # 1 CPU: pends for Priority behind it, expected start likewise
    held: str  # sbatch -H: no estimate (not demand)


def fill_for_backfill(c: SlurmCluster, timeout: float = 20.0) -> BackfillJobs:
    """Fill both live nodes with time-limited jobs, then queue work that has to wait for them: with
    the limits known, the backfill scheduler sets the pending jobs' StartTime (until then N/A)."""
    limit = f"--time={FILL_TIME_MIN}"
    filling = [c.sbatch("fill", cpus=NODE_CPUS, mem="100M", extra=["-w", n, limit]) for n in LIVE_NODES]
    for jid in filling:
        c.wait_state(jid, "RUNNING")
    whole = c.sbatch("g104_spades_dave", cpus=NODE_CPUS, mem="1G", extra=["--time=10"])
    one = c.sbatch("g105_fastp_erin", cpus=1, mem="100M", extra=["--time=10"])
    held = c.sbatch("held_two", cpus=1, extra=["-H", "--time=10"])

    def estimated() -> bool:
        out = c.run(["squeue", "-h", "-j", f"{whole},{one}", "-o", "%S"]).split()
        return len(out) == 2 and "N/A" not in out

    wait_for(estimated, timeout, "the backfill scheduler to set expected start times")
    return BackfillJobs(filling, whole, one, held)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_conf(d: Path, sched_params: str) -> Path:
    ports = {"ctld_port": free_port(), "n1_port": free_port(), "n2_port": free_port(), "n3_port": free_port()}
    conf = d / "slurm.conf"
    conf.write_text(_CONF.format(d=d, cpus=NODE_CPUS, mem=NODE_MEM_MB, sched_params=sched_params, **ports))
    (d / "gres.conf").write_text(_GRES)
    for sub in ("state", *(f"spool/{n}" for n in (*LIVE_NODES, DOWN_NODE))):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for p in (conf, d / "gres.conf"):
        p.chmod(0o644)
    return conf


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    """Until n1 and n2 are idle; fails at once when a daemon exits (wait_for would keep polling)."""
    deadline = time.monotonic() + timeout
    while True:
        for name, p in cluster.procs.items():
            if p.poll() is not None:
                raise SlurmError(f"{name} exited with status {p.returncode}")
        out = cluster.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
        states = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
        if all(states.get(n) == "idle" for n in LIVE_NODES):
            return
        if time.monotonic() > deadline:
            raise SlurmError(f"nodes not idle after {timeout}s: {states}")
        time.sleep(0.05)


def _kill_leftovers(conf: Path) -> None:
    """SIGKILL any process still carrying this cluster's SLURM_CONF (slurmstepd and job steps daemonize,
    so they outlive slurmd when scancel did not finish). Matches our exact conf path only."""
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def start_slurm(base: Path | None = None, sched_params: str = SCHED_PARAMS) -> SlurmCluster:
    """Start slurmctld and the live slurmds in a fresh world-readable dir; wait until both nodes are idle.

    Usable without pytest (``tests/capture_fixtures.py``); pair with ``stop_slurm``.
    """
    d = Path(tempfile.mkdtemp(prefix="metasched-slurm-", dir=base))
    d.chmod(0o755)  # mstest reads slurm.conf through ssh
    conf = _write_conf(d, sched_params)
    cluster = SlurmCluster(conf=conf, env={"SLURM_CONF": str(conf)}, dir=d)
    env: Mapping[str, str] = {**os.environ, **cluster.env}
    try:
        cluster.procs["slurmctld"] = start(
            ["slurmctld", "-D", "-f", str(conf)], d / "slurmctld.out", dict(env)
        )
        for node in LIVE_NODES:
            argv = ["slurmd", "-D", "-N", node, "-f", str(conf)]
            cluster.procs[f"slurmd -N {node}"] = start(argv, d / f"slurmd-{node}.out", dict(env))

        try:
            _wait_idle(cluster, timeout=30.0)
        except SlurmError as exc:
            dead = [name for name, p in cluster.procs.items() if p.poll() is not None]
            logs = "\n".join(
                f"--- {name}:\n{_tail(d / name)}"
                for name in ("slurmctld.log", "slurmctld.out", *(f"slurmd-{n}.log" for n in LIVE_NODES))
            )
            raise SlurmError(f"slurm did not come up ({exc}); exited: {dead}\n{logs}") from exc
    except BaseException:
        stop_slurm(cluster, cancel=False)
        raise
    return cluster


def stop_slurm(cluster: SlurmCluster, cancel: bool = True) -> None:
    """scancel everything and wait for an empty queue, then SIGTERM slurmds, then slurmctld (recipe order)."""
    try:
        if cancel:
            # Stopping anyway when this fails; the dir goes with it.
            with contextlib.suppress(TimeoutError, SlurmError, subprocess.TimeoutExpired):
                cluster.cancel_all()
        for p in reversed(cluster.procs.values()):  # slurmds were started after slurmctld
            stop(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in cluster.procs.values()):
            time.sleep(0.05)
        _kill_leftovers(cluster.conf)
    finally:
        shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """Running cluster with the ``populate`` job mix (``slurm.jobs``); n3 is down.

    Tests may submit more jobs (they will pend: free CPUs are few) and should scancel what they add.
    """
    cluster = start_slurm()
    try:
        populate(cluster)
        yield cluster
    finally:
        stop_slurm(cluster)


@pytest.fixture(scope="session")
def slurm_backfill() -> Iterator[tuple[SlurmCluster, BackfillJobs]]:
    """A second cluster (same layout) whose backfill scheduler runs every second, filled by
    ``fill_for_backfill``: its pending jobs carry Slurm's expected start. Tests must not change it."""
    cluster = start_slurm(sched_params=BACKFILL_PARAMS)
    try:
        yield cluster, fill_for_backfill(cluster)
    finally:
        stop_slurm(cluster)
