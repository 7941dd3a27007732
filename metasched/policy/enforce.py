"""Opt-in enforcement of a group's policy on the shared nodes: renice the jobs of non-priority schedulers.

What seed 2 did with ``renice``, without its guesswork: processes come from each scheduler's own
job -> pid data, never from matching process names.

- Slurm: running jobs and their nodes from ``squeue``; each job's pids from ``scontrol listpids JOB
  NODE`` on that node (``NODE`` names the slurmd when a host runs several).
- SGE: running jobs and hosts from ``qstat -xml``; the execd spool (``qconf -sconf``:
  ``execd_spool_dir``) holds ``<host>/active_jobs/<job>.<task>/job_pid`` (found with ``find``: the
  execd's own host name may differ from qstat's), the job's process-group leader; every process of
  that group (``ps -e -o pid=,pgid=,ni=``) is the job.

A command runs on the node's ``node`` destination from the policy's ``nodes`` (matched by id or host),
else on the scheduler destination's own host. Every command is an argv list the transport quotes;
``sudo -n`` is prepended to renice only when the policy says ``sudo: true``. Processes already at the
target nice are left alone, so enforcement after every collect only acts (and logs) on change.
Nice values: best_effort uses the policy's ``nice``; shared/dynamic ``round((1 - weight/100) * 19)``.
Exclusive needs no renice (rank keeps the other schedulers off busy nodes).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from metasched.config import Config, DestinationConfig
from metasched.errors import CollectError, MetaschedError
from metasched.policy import ActivePolicy, active_policies, record_actions

if TYPE_CHECKING:
    from metasched.collect.transport import Transport
    from metasched.store import Store

log = logging.getLogger("metasched.enforce")

SUPPORTED = ("slurm", "sge")
MAX_NICE = 19


@dataclass(frozen=True, slots=True)
class Action:
    """One renice (done, failed, or only planned in a dry run); also what ``status`` shows."""

    at: str
    group: str
    policy: str
    destination: str
    job: str
    node: str
    host: str  # where the command runs (transport label)
    nice: int
    pids: tuple[int, ...]
    command: str  # exactly what runs, shell-quoted for display
    ok: bool
    dry_run: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pids"] = list(self.pids)
        return d


@dataclass(slots=True)
class Report:
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # skipped destinations, discovery failures

    @property
    def failed(self) -> int:
        return sum(1 for a in self.actions if not a.ok)


def target_nice(policy: ActivePolicy, dest_id: str) -> int | None:
    """The nice value this destination's jobs get; None when the policy leaves them alone."""
    p = policy.config
    if p.name == "exclusive" or dest_id == p.high_priority:
        return None
    if p.name == "best_effort":
        return p.nice
    return max(0, min(MAX_NICE, round((1 - policy.weight(dest_id) / 100.0) * MAX_NICE)))


def renice_command(nice: int, pids: Sequence[int], sudo: bool) -> list[str]:
    argv = ["renice", "-n", str(nice), "-p", *(str(p) for p in pids)]
    return ["sudo", "-n", *argv] if sudo else argv


def parse_listpids(text: str) -> list[int]:
    """``scontrol listpids``: a header, then ``PID JOBID STEPID LOCALID GLOBALID`` rows."""
    pids = []
    for line in text.splitlines():
        first = line.split(None, 1)[0] if line.strip() else ""
        if first.isdigit():
            pids.append(int(first))
    return pids


def parse_ps(text: str) -> dict[int, tuple[int, int]]:
    """``ps -e -o pid=,pgid=,ni=``: pid -> (pgid, nice). Kernel threads print ``-`` for nice: skipped."""
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.lstrip("-").isdigit() for p in parts):
            out[int(parts[0])] = (int(parts[1]), int(parts[2]))
    return out


def parse_squeue_running(text: str) -> list[tuple[str, str]]:
    """``squeue -h -t RUNNING -o '%A %N'``: (job id, node list expression)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((parts[0], parts[1]))
    return rows


def spool_dir(qconf_sconf: str) -> str | None:
    for line in qconf_sconf.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "execd_spool_dir":
            return parts[1]
    return None


class _Hosts:
    """Transports opened on demand and reused within one enforcement run."""

    def __init__(self, config: Config, nodes: Sequence[str]) -> None:
        self.config = config
        self.nodes = [d for n in nodes if (d := config.destination(n)) is not None]
        self._open: dict[str, Transport] = {}

    def for_node(self, node: str, fallback: DestinationConfig) -> Transport:
        match = next((d for d in self.nodes if node in (d.id, d.host) or d.id == f"node-{node}"), None)
        return self.get(match or fallback)

    def get(self, dest: DestinationConfig) -> Transport:
        from metasched.collect.transport import open_transport

        if dest.id not in self._open:
            self._open[dest.id] = open_transport(dest)
        return self._open[dest.id]

    def close(self) -> None:
        for t in self._open.values():
            with contextlib.suppress(Exception):
                t.close()


@contextlib.contextmanager
def _hosts(config: Config, nodes: Sequence[str]) -> Iterator[_Hosts]:
    hosts = _Hosts(config, nodes)
    try:
        yield hosts
    finally:
        hosts.close()


def _slurm_jobs(head: Transport, dest: DestinationConfig) -> list[tuple[str, str]]:
    """(job id, node name) of every running job, node lists expanded by Slurm itself."""
    rows = parse_squeue_running(head.run(["squeue", "-h", "-a", "-t", "RUNNING", "-o", "%A %N"]))
    out: list[tuple[str, str]] = []
    for job, expr in rows:
        names = [expr]
        if "[" in expr or "," in expr:
            names = head.run(["scontrol", "show", "hostnames", expr]).split()
        out.extend((job, n) for n in names)
    return out


def _sge_binary(dest: DestinationConfig, name: str) -> str:
    bin_dir = dest.sge.bin_dir
    return f"{bin_dir.rstrip('/')}/{name}" if bin_dir else name


def _sge_env(dest: DestinationConfig) -> dict[str, str]:
    env: dict[str, str] = {}
    if dest.sge.root:
        env["SGE_ROOT"] = dest.sge.root
    if dest.sge.cell:
        env["SGE_CELL"] = dest.sge.cell
    return env


def _sge_jobs(head: Transport, dest: DestinationConfig) -> tuple[list[tuple[str, str]], str | None]:
    """(job id, host) of every running job (array tasks as ``N_T``) and the execd spool directory."""
    from metasched.collect.adapters.sge import parse_qstat_jobs

    env = _sge_env(dest)
    jobs = parse_qstat_jobs(head.run([_sge_binary(dest, "qstat"), "-xml", "-u", "*", "-s", "r"], env=env))
    spool = spool_dir(head.run([_sge_binary(dest, "qconf"), "-sconf"], env=env))
    return [(j.job_id, j.nodes) for j in jobs if j.state == "running" and j.nodes], spool


def _job_pids(
    scheduler: str, runner: Transport, dest: DestinationConfig, job: str, node: str, spool: str | None
) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """The job's pids on ``node`` and that host's (pgid, nice) table."""
    if scheduler == "slurm":
        # dest.env (SLURM_CONF, ...) also when the command runs on a policy `nodes` host
        pids = parse_listpids(runner.run(["scontrol", "listpids", job, node], env=dest.env))
        table = parse_ps(runner.run(["ps", "-e", "-o", "pid=,pgid=,ni="]))
        return [p for p in pids if p in table], table
    if spool is None:
        raise CollectError("execd_spool_dir not found in qconf -sconf")
    number, _, task = job.partition("_")
    if not (number.isdigit() and (task or "1").isdigit()):
        raise CollectError(f"unexpected SGE job id {job!r}")
    # execd names its spool directory as it resolves its own host, which may differ from qstat's
    # host name (host_aliases): look for the job's directory under every host directory.
    found = runner.run(
        [
            "find",
            spool,
            "-mindepth",
            "4",
            "-maxdepth",
            "4",
            "-path",
            f"*/active_jobs/{number}.{task or 1}/job_pid",
        ]
    ).split()
    if len(found) != 1:
        raise CollectError(f"job_pid of {number}.{task or 1} under {spool}: found {len(found)} files")
    leader = runner.run(["cat", found[0]]).strip()
    if not leader.isdigit():
        raise CollectError(f"{found[0]}: not a pid: {leader[:40]!r}")
    table = parse_ps(runner.run(["ps", "-e", "-o", "pid=,pgid=,ni="]))
    return sorted(p for p, (pgid, _) in table.items() if pgid == int(leader)), table


def enforce(
    config: Config,
    store: Store,
    *,
    dry_run: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    only_enabled: bool = False,
) -> Report:
    """Renice what the active policies say; record (unless ``dry_run``) and log every action.

    ``only_enabled``: act only for groups with ``enforce: true`` (after collect); ``metasched enforce``
    acts for every group on demand. Failures become failed actions or notes, never exceptions.
    """
    report = Report()
    for policy in active_policies(config, store):
        if only_enabled and not policy.config.enforce:
            continue
        if policy.name == "exclusive":
            report.notes.append(f"{policy.group}: exclusive: nothing to renice")
            continue
        with _hosts(config, policy.config.nodes) as hosts:
            for dest_id in policy.config.destinations:
                _enforce_destination(config, policy, dest_id, hosts, report, dry_run, now)
    if not dry_run:
        record_actions(store, [a.to_dict() for a in report.actions])
    return report


def _enforce_destination(
    config: Config,
    policy: ActivePolicy,
    dest_id: str,
    hosts: _Hosts,
    report: Report,
    dry_run: bool,
    now: Callable[[], datetime],
) -> None:
    nice = target_nice(policy, dest_id)
    dest = config.destination(dest_id)
    if nice is None or dest is None:
        return
    if dest.scheduler not in SUPPORTED:
        report.notes.append(f"{dest_id}: enforcement not supported for {dest.scheduler} (job pids unknown)")
        return
    try:
        head = hosts.get(dest)
        spool: str | None = None
        if dest.scheduler == "slurm":
            jobs = _slurm_jobs(head, dest)
        else:
            jobs, spool = _sge_jobs(head, dest)
    except MetaschedError as exc:
        report.notes.append(f"{dest_id}: running jobs unknown: {exc}")
        log.warning("enforce %s: running jobs unknown: %s", dest_id, exc)
        return
    for job, node in jobs:
        try:
            runner = hosts.for_node(node, dest)
            pids, table = _job_pids(dest.scheduler, runner, dest, job, node, spool)
        except MetaschedError as exc:
            report.notes.append(f"{dest_id} job {job} on {node}: pids unknown: {exc}")
            log.warning("enforce %s job %s on %s: pids unknown: %s", dest_id, job, node, exc)
            continue
        todo = [p for p in pids if table[p][1] != nice]
        if not todo:
            continue
        argv = renice_command(nice, todo, policy.config.sudo)
        error: str | None = None
        if not dry_run:
            try:
                runner.run(argv)
            except MetaschedError as exc:
                error = str(exc)
        action = Action(
            at=now().replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            group=policy.group,
            policy=policy.name,
            destination=dest_id,
            job=job,
            node=node,
            host=runner.label,
            nice=nice,
            pids=tuple(todo),
            command=shlex.join(argv),
            ok=error is None,
            dry_run=dry_run,
            error=error,
        )
        report.actions.append(action)
        if error is not None:
            log.warning("enforce %s job %s on %s FAILED: %s", dest_id, job, node, error)
        elif not dry_run:
            log.info("enforce %s job %s on %s (%s): %s", dest_id, job, node, runner.label, action.command)


def enforce_after_collect(config: Config, store: Store) -> list[str]:
    """For the collect run: act for ``enforce: true`` groups; any failure is a warning, not an error."""
    if not any(p.enforce for p in config.policies):
        return []
    try:
        report = enforce(config, store, only_enabled=True)
    except Exception as exc:
        log.warning("enforce: not done: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return [f"enforce: not done: {type(exc).__name__}: {exc}"]
    return [f"enforce: {a.destination} job {a.job}: {a.error}" for a in report.actions if not a.ok]
