"""Opt-in enforcement of a group's policy on the shared nodes: renice the jobs of non-priority schedulers.

What seed 2 did with ``renice``, without its guesswork: processes come from each scheduler's own
job -> pid data, never from matching process names.

- Slurm: running jobs and their nodes from ``squeue``; each job's pids from ``scontrol listpids JOB
  NODE`` on that node (``NODE`` names the slurmd when a host runs several).
- SGE: running jobs and hosts from ``qstat -xml``; the execd spool (``qconf -sconf``:
  ``execd_spool_dir``) holds ``<host>/active_jobs/<job>.<task>/job_pid`` (found with ``find``: the
  execd's own host name may differ from qstat's), the job's process-group leader; every process of
  that group (``ps -e -o pid=,ppid=,pgid=,ni=``) and its descendants are the job.
- YARN: running applications and NodeManager hosts from the ResourceManager REST API (``curl`` on the
  head node, as collect does); on each NodeManager the container pid files the NM writes itself,
  ``<yarn.nodemanager.local-dirs>/nmPrivate/<app>/<container>/<container>.pid`` (``yarn_local_dirs``,
  default the NM's ``${hadoop.tmp.dir}/nm-local-dir`` for user yarn). Each pid is the container's launch
  shell, started with ``setsid``: its process group and descendants are the container.
- HTCondor: running jobs and their execute hosts from ``condor_q`` (``RemoteHost``); on each execute
  host ``condor_who -af JobId '#PID'`` gives each job's pid as the startd and starter know it; the job
  is that process and its descendants (and its group when it leads one).

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
import math
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from metasched.domain.errors import CollectError, MetaschedError
from metasched.policy import ActivePolicy, active_policies, record_actions
from metasched.settings import Config, DestinationConfig

if TYPE_CHECKING:
    from metasched.collect.transport import Transport
    from metasched.store import Store

log = logging.getLogger("metasched.enforce")

SUPPORTED = ("slurm", "sge", "yarn", "htcondor")
MAX_NICE = 19
# yarn.nodemanager.local-dirs defaults to ${hadoop.tmp.dir}/nm-local-dir, hadoop.tmp.dir to
# /tmp/hadoop-${user.name}; the NodeManager runs as user yarn.
YARN_LOCAL_DIRS = ("/tmp/hadoop-yarn/nm-local-dir",)
PS_ARGV = ["ps", "-e", "-o", "pid=,ppid=,pgid=,ni="]
_APP_ID = re.compile(r"application_\d+_\d+")
_CONTAINER_ID = re.compile(r"container_(?:e\d+_)?\d+_\d+_\d+_\d+")


class Proc(NamedTuple):
    ppid: int
    pgid: int
    nice: int


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


def parse_ps(text: str) -> dict[int, Proc]:
    """``ps -e -o pid=,ppid=,pgid=,ni=``: pid -> Proc. Real-time tasks print ``-`` for nice: skipped."""
    out: dict[int, Proc] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.lstrip("-").isdigit() for p in parts):
            out[int(parts[0])] = Proc(int(parts[1]), int(parts[2]), int(parts[3]))
    return out


def family(table: dict[int, Proc], leader: int) -> list[int]:
    """``leader``, its process group when it leads one, and every descendant of those (by ppid)."""
    if leader not in table:
        return []
    found = {leader}
    if table[leader].pgid == leader:
        found |= {p for p, proc in table.items() if proc.pgid == leader}
    children: dict[int, list[int]] = {}
    for p, proc in table.items():
        children.setdefault(proc.ppid, []).append(p)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def parse_container_pids(text: str) -> dict[str, list[int]]:
    """``awk`` over ``<local-dir>/nmPrivate/<app>/<container>/<container>.pid``: app id -> container pids.

    Lines are ``PATH:PID``; a path not shaped like the NodeManager's own (the container directory and
    file named by the same container id of that application), or an empty pid file the NM has not
    finished writing, is ignored.
    """
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        path, sep, pid = line.rpartition(":")
        parts = path.split("/")
        if not sep or not pid.strip().isdigit() or len(parts) < 4 or parts[-4] != "nmPrivate":
            continue
        app, container, name = parts[-3], parts[-2], parts[-1]
        if not (_APP_ID.fullmatch(app) and _CONTAINER_ID.fullmatch(container) and name == f"{container}.pid"):
            continue
        if container.split("_")[-4:-2] != app.split("_")[1:]:  # the container of another application
            continue
        out.setdefault(app, []).append(int(pid))
    return out


def parse_condor_q_running(text: str) -> list[tuple[str, str]]:
    """``condor_q -allusers -constraint 'JobStatus == 2' -af ClusterId ProcId RemoteHost``:
    (``Cluster.Proc``, execute host). RemoteHost is ``slotN[_M]@host``; a job without one is skipped."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and "@" in parts[2]:
            rows.append((f"{parts[0]}.{parts[1]}", parts[2].rpartition("@")[2]))
    return rows


def parse_condor_who(text: str) -> dict[str, int]:
    """``condor_who -af JobId '#PID'``: job id -> its pid (condor_who leaves the pid empty when the
    starter log does not name it yet: such jobs are skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"\d+\.\d+", parts[0]) and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
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


@dataclass(slots=True)
class _Found:
    """What one destination's discovery learnt beyond its (job, node) list, shared by its jobs' lookups."""

    spool: str | None = None  # SGE execd_spool_dir
    listings: dict[str, Any] = field(default_factory=dict)  # transport label -> parsed per-host listing


def _yarn_fetch(head: Transport, dest: DestinationConfig, path: str) -> str:
    from metasched.collect.adapters.yarn import DEFAULT_URL

    max_time = max(1, math.floor(dest.ssh.command_timeout * 0.8))
    url = (dest.yarn_url or DEFAULT_URL).rstrip("/") + path
    return head.run(["curl", "-fsS", "--max-time", str(max_time), "-H", "Accept: application/json", url])


def _yarn_pid_files(runner: Transport, dest: DestinationConfig) -> dict[str, list[int]]:
    """The NodeManager's container pid files on this host: app id -> container launch-shell pids."""
    dirs = [f"{d.rstrip('/')}/nmPrivate" for d in (dest.yarn_local_dirs or YARN_LOCAL_DIRS)]
    argv = ["find", *dirs, "-mindepth", "3", "-maxdepth", "3", "-type", "f", "-name", "container_*.pid"]
    argv += ["-exec", "awk", '{ print FILENAME ":" $0 }', "{}", "+"]
    return parse_container_pids(runner.run(argv))


def _yarn_jobs(
    head: Transport, dest: DestinationConfig, hosts: _Hosts, found: _Found, report: Report
) -> list[tuple[str, str]]:
    """(application, NodeManager host) for every RUNNING application with a container pid file there."""
    from metasched.collect.adapters.yarn import NODES_PATH, parse_apps, parse_nodes

    apps = {j.job_id for j in parse_apps(_yarn_fetch(head, dest, "/ws/v1/cluster/apps?states=RUNNING"))}
    nodes = [n.name for n in parse_nodes(_yarn_fetch(head, dest, NODES_PATH)) if n.available]
    out: list[tuple[str, str]] = []
    for node in nodes:
        try:
            runner = hosts.for_node(node, dest)
            if runner.label in found.listings:  # several NodeManagers reached on one host: listed once
                continue
            found.listings[runner.label] = listing = _yarn_pid_files(runner, dest)
        except MetaschedError as exc:
            report.notes.append(f"{dest.id} on {node}: container pids unknown: {exc}")
            log.warning("enforce %s on %s: container pids unknown: %s", dest.id, node, exc)
            continue
        out.extend((app, node) for app in sorted(listing) if app in apps)
    return out


def _condor_jobs(head: Transport, dest: DestinationConfig) -> list[tuple[str, str]]:
    argv = ["condor_q", "-allusers", "-constraint", "JobStatus == 2"]
    argv += ["-af", "ClusterId", "ProcId", "RemoteHost"]
    return parse_condor_q_running(head.run(argv, env=dest.env))


def _jobs(
    head: Transport, dest: DestinationConfig, hosts: _Hosts, found: _Found, report: Report
) -> list[tuple[str, str]]:
    if dest.scheduler == "slurm":
        return _slurm_jobs(head, dest)
    if dest.scheduler == "sge":
        jobs, found.spool = _sge_jobs(head, dest)
        return jobs
    if dest.scheduler == "yarn":
        return _yarn_jobs(head, dest, hosts, found, report)
    return _condor_jobs(head, dest)


def _sge_leader(runner: Transport, job: str, spool: str | None) -> int:
    if spool is None:
        raise CollectError("execd_spool_dir not found in qconf -sconf")
    number, _, task = job.partition("_")
    if not (number.isdigit() and (task or "1").isdigit()):
        raise CollectError(f"unexpected SGE job id {job!r}")
    # execd names its spool directory as it resolves its own host, which may differ from qstat's
    # host name (host_aliases): look for the job's directory under every host directory.
    pattern = f"*/active_jobs/{number}.{task or 1}/job_pid"
    found = runner.run(["find", spool, "-mindepth", "4", "-maxdepth", "4", "-path", pattern]).split()
    if len(found) != 1:
        raise CollectError(f"job_pid of {number}.{task or 1} under {spool}: found {len(found)} files")
    leader = runner.run(["cat", found[0]]).strip()
    if not leader.isdigit():
        raise CollectError(f"{found[0]}: not a pid: {leader[:40]!r}")
    return int(leader)


def _job_pids(
    runner: Transport, dest: DestinationConfig, job: str, node: str, found: _Found
) -> tuple[list[int], dict[int, Proc]]:
    """The job's pids on ``node`` and that host's process table."""
    if dest.scheduler == "slurm":
        # dest.env (SLURM_CONF, ...) also when the command runs on a policy `nodes` host
        pids = parse_listpids(runner.run(["scontrol", "listpids", job, node], env=dest.env))
        table = parse_ps(runner.run(PS_ARGV))
        return [p for p in pids if p in table], table
    if dest.scheduler == "sge":
        leader = _sge_leader(runner, job, found.spool)
        table = parse_ps(runner.run(PS_ARGV))
        return family(table, leader), table
    if dest.scheduler == "yarn":
        leaders = found.listings.get(runner.label, {}).get(job, [])
    else:
        if runner.label not in found.listings:
            found.listings[runner.label] = parse_condor_who(
                runner.run(["condor_who", "-af", "JobId", "#PID"], env=dest.env)
            )
        pid = found.listings[runner.label].get(job)
        if pid is None:
            raise CollectError(f"condor_who on {runner.label} names no pid for job {job}")
        leaders = [pid]
    table = parse_ps(runner.run(PS_ARGV))
    return sorted({p for leader in leaders for p in family(table, leader)}), table


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
    found = _Found()
    try:
        jobs = _jobs(hosts.get(dest), dest, hosts, found, report)
    except MetaschedError as exc:
        report.notes.append(f"{dest_id}: running jobs unknown: {exc}")
        log.warning("enforce %s: running jobs unknown: %s", dest_id, exc)
        return
    for job, node in jobs:
        try:
            runner = hosts.for_node(node, dest)
            pids, table = _job_pids(runner, dest, job, node, found)
        except MetaschedError as exc:
            report.notes.append(f"{dest_id} job {job} on {node}: pids unknown: {exc}")
            log.warning("enforce %s job %s on %s: pids unknown: %s", dest_id, job, node, exc)
            continue
        todo = [p for p in pids if table[p].nice != nice]
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
