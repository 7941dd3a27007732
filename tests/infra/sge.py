"""Real Son of Grid Engine 8.1.9 single-host cell (recipe: shared/reference/test-infra.md).

An isolated cell in a temporary SGE_ROOT with its own qmaster/execd ports, so it never touches a
system-wide Grid Engine. The tree is world-readable so the non-root ssh test user can run the clients.
If the cell cannot come up the fixture fails with the tail of the daemon logs (never a silent skip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metasched.settings import SGESettings
from tests.infra.procs import free_port, start, stop, wait_for

SGE_SHARE = Path("/usr/share/gridengine")
SGE_LIB = Path("/var/lib/gridengine")
SGE_BIN = Path("/usr/lib/gridengine")  # the real binaries (/usr/bin/q* are wrapper scripts)
SGE_SBIN = Path("/usr/sbin")
CELL = "default"

QUEUE_TEMPLATE = """\
qname                 all.q
hostlist              {host}
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               NONE
rerun                 FALSE
slots                 {slots}
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
"""


@dataclass
class SGECluster:
    """A running cell. ``env`` is what every client needs; ``bin_dir`` holds qstat/qhost/qsub."""

    base: Path
    root: Path
    cell: str
    host: str
    qmaster_port: int
    execd_port: int
    bin_dir: Path
    jobs: dict[str, list[str]] = field(default_factory=dict)  # kind -> job ids, see submit_mix
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            "SGE_ROOT": str(self.root),
            "SGE_CELL": self.cell,
            "SGE_QMASTER_PORT": str(self.qmaster_port),
            "SGE_EXECD_PORT": str(self.execd_port),
        }

    def settings(self) -> SGESettings:
        return SGESettings(bin_dir=str(self.bin_dir), root=str(self.root), cell=self.cell)

    def run(self, tool: str, *args: str, check: bool = True) -> str:
        """Run a Grid Engine client as root with the cell's environment; return stdout."""
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def qsub(self, *args: str, name: str = "sleeper", command: Sequence[str] = ("sleep", "300")) -> str:
        """Submit a binary job; extra options (``-h``, ``-hold_jid 12``) go in ``args``. Returns the id."""
        quiet = ("-terse", "-b", "y", "-o", "/dev/null", "-e", "/dev/null")
        out = self.run("qsub", *quiet, "-N", name, *args, *command)
        return out.strip().split(".")[0]  # array jobs answer "5.1-3:1"

    def states(self) -> dict[str, str]:
        """Job id -> SGE state letters, from the plain ``qstat`` table."""
        states: dict[str, str] = {}
        for line in self.run("qstat", "-u", "*").splitlines()[2:]:
            fields = line.split()
            if len(fields) > 4:
                states.setdefault(fields[0], fields[4])
        return states

    def submit_mix(self) -> dict[str, list[str]]:
        """The job mix the tests expect: an error (Eqw) job, 2 running, pending, an array, a held and a
        dependency-held job. The error job goes first so it can fail while a slot is still free."""
        jobs: dict[str, list[str]] = {}
        jobs["error"] = [self.qsub("-o", "/nonexistent/dir/out", name="broken_output", command=("true",))]
        wait_for(lambda: self.states().get(jobs["error"][0]) == "Eqw", timeout=30, what="an Eqw job")
        jobs["running"] = [self.qsub(name="g201_bwa_bob"), self.qsub(name="g202_bwa_bob")]
        jobs["pending"] = [self.qsub("-l", "h_vmem=2G", "-q", "all.q", name="g203_hisat2_alice")]
        jobs["array"] = [self.qsub("-t", "1-3", name="array_job")]
        jobs["held"] = [self.qsub("-h", name="held_job")]
        jobs["dependent"] = [self.qsub("-hold_jid", jobs["held"][0], name="dependent_job")]
        wait_for(
            lambda: all(self.states().get(j) == "r" for j in jobs["running"]), timeout=30, what="running jobs"
        )
        return jobs

    def qdel(self, *job_ids: str) -> None:
        self.run("qdel", "-f", *job_ids, check=False)

    def stop(self) -> None:
        # sge_shepherd outlives execd: let execd kill every job (plain qdel), force what is left,
        # end any shepherd still working in this cell's spool (by PID), then SIGKILL the daemons.
        self.run("qdel", "-u", "*", "*", check=False)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self.states(), timeout=5, what="jobs deleted")
        self.run("qdel", "-f", "-u", "*", "*", check=False)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self.shepherds(), timeout=5, what="shepherds gone")
        for pid in self.shepherds():
            for child in _children(pid):  # the job: a session leader of its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in reversed(self.procs):
            stop(proc, sig=signal.SIGKILL, timeout=5)

    def shepherds(self) -> list[int]:
        """PIDs of processes whose working directory is inside this cell's execd spool (its job shepherds)."""
        spool = str(self.base / "spool" / "execd")
        daemons = {p.pid for p in self.procs}
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if cwd.startswith(spool) and int(proc.name) not in daemons:
                pids.append(int(proc.name))
        return pids


def _children(parent: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(parent):
            kids.append(int(stat.parent.name))
    return kids


def _sgeadmin(argv: Sequence[str], env: dict[str, str]) -> None:
    subprocess.run(
        ["runuser", "-u", "sgeadmin", "--", *argv],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )


def _write_cell(base: Path, host: str) -> Path:
    root = base / "root"
    common = root / CELL / "common"
    common.mkdir(parents=True)
    for sub in ("qmaster/job_scripts", "db", "execd"):
        (base / "spool" / sub).mkdir(parents=True)
    for name in ("bin", "lib", "util", "utilbin"):
        (root / name).symlink_to(SGE_LIB / name)
    spool = base / "spool"
    bootstrap = []
    for line in (SGE_SHARE / "default-bootstrap").read_text().splitlines():
        key = line.split()[0] if line.split() else ""
        if key == "spooling_params":
            line = f"spooling_params         {spool / 'db'}"
        elif key == "qmaster_spool_dir":
            line = f"qmaster_spool_dir       {spool / 'qmaster'}"
        bootstrap.append(line)
    (common / "bootstrap").write_text("\n".join(bootstrap) + "\n")
    (common / "act_qmaster").write_text(host + "\n")
    (common / "host_aliases").write_text(f"{host} localhost\n")
    overrides = {
        "execd_spool_dir": str(spool / "execd"),
        "min_uid": "0",
        "min_gid": "0",
        "load_report_time": "00:00:05",
        "mailer": "/bin/true",
    }
    conf = []
    for line in (SGE_SHARE / "default-configuration").read_text().splitlines():
        key = line.split()[0] if line.split() else ""
        conf.append(f"{key:<22} {overrides[key]}" if key in overrides else line)
    (base / "global.conf").write_text("\n".join(conf) + "\n")
    subprocess.run(["chown", "-R", "sgeadmin:", str(base)], check=True)
    # Readable (not writable) by everyone, so the ssh test user can run the clients against this cell.
    for path in [base, *base.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
    return root


def start_cell(base: Path, slots: int = 2) -> SGECluster:
    """Bring up qmaster + execd + ``all.q`` in ``base``; raise RuntimeError/TimeoutError when it cannot."""
    host = socket.gethostname()
    root = _write_cell(base, host)
    cluster = SGECluster(
        base=base,
        root=root,
        cell=CELL,
        host=host,
        qmaster_port=free_port(),
        execd_port=free_port(),
        bin_dir=SGE_BIN,
    )
    env = cluster.env
    spool_db = str(base / "spool" / "db")
    spooldefaults = str(SGE_BIN / "spooldefaults")
    resources = SGE_SHARE / "util" / "resources"
    _sgeadmin([str(SGE_BIN / "spoolinit"), "berkeleydb", "libspoolb", spool_db, "init"], env)
    _sgeadmin([spooldefaults, "configuration", str(base / "global.conf")], env)
    _sgeadmin([spooldefaults, "complexes", str(resources / "centry")], env)
    _sgeadmin([spooldefaults, "usersets", str(resources / "usersets")], env)
    _sgeadmin([spooldefaults, "managers", "sgeadmin"], env)
    _sgeadmin([spooldefaults, "adminhosts", host], env)

    daemon_env = {**os.environ, **env, "SGE_ND": "1"}
    cluster.procs.append(start([str(SGE_SBIN / "sge_qmaster")], base / "qmaster.log", env=daemon_env))
    try:
        wait_for(lambda: bool(cluster.run("qconf", "-sh").strip()), timeout=30, what="sge_qmaster")
        cluster.run("qconf", "-as", host)
        sconf = cluster.run("qconf", "-ssconf")
        lines = [
            "schedule_interval                 0:0:1" if line.startswith("schedule_interval") else line
            for line in sconf.splitlines()
        ]
        (base / "sched.conf").write_text("\n".join(lines) + "\n")
        cluster.run("qconf", "-Msconf", str(base / "sched.conf"))
        cluster.procs.append(start([str(SGE_SBIN / "sge_execd")], base / "execd.log", env=daemon_env))
        wait_for(lambda: host in cluster.run("qconf", "-sel"), timeout=30, what="sge_execd registration")
        (base / "all.q").write_text(QUEUE_TEMPLATE.format(host=host, slots=slots))
        cluster.run("qconf", "-Aq", str(base / "all.q"))
        wait_for(
            lambda: "<slots_total>" in cluster.run("qstat", "-f", "-xml") and _queue_ok(cluster),
            timeout=30,
            what="all.q usable",
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def log_tail(base: Path, lines: int = 20) -> str:
    """The end of the daemons' stdout logs and their spool ``messages`` files, for failure messages."""
    chunks = []
    for log in [*sorted(base.glob("*.log")), *sorted(base.glob("spool/**/messages"))]:
        text = log.read_text(errors="replace").splitlines()[-lines:]
        chunks.append(f"--- {log}\n" + "\n".join(text))
    return "\n".join(chunks)


def _queue_ok(cluster: SGECluster) -> bool:
    """The queue instance exists and carries no state flag (e.g. ``au`` while execd has not reported)."""
    out = cluster.run("qstat", "-f", "-xml")
    return "<state>" not in out


@pytest.fixture(scope="session")
def sge() -> Iterator[SGECluster]:
    if not (SGE_SBIN / "sge_qmaster").exists():
        pytest.fail("gridengine-master is not installed (bash .ci/run installs it)")
    base = Path(tempfile.mkdtemp(prefix="metasched-sge-"))
    base.chmod(0o755)
    cluster: SGECluster | None = None
    try:
        cluster = start_cell(base)
        cluster.jobs = cluster.submit_mix()
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        if cluster is not None:
            cluster.stop()
        tail = log_tail(base)
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"SGE cell did not come up: {exc}\n{tail}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
