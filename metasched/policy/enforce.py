"""Opt-in enforcement of a group's policy on the shared nodes: renice the jobs of non-priority schedulers.

What seed 2 did with ``renice``, without its guesswork: processes come from each scheduler's own
job -> pid data, never from matching process names. Enforcement asks the destination's adapter for
that data through one port (``domain.ports.JobProcesses``); the scheduler's commands live in its
adapter (``metasched.schedulers``), and the application layer hands enforcement the adapters and a way
to open connections. An adapter without that capability is a note, not an error.

A command runs on the node's ``node`` destination from the policy's ``nodes`` (matched by id or host),
else on the scheduler destination's own host. Every command is an argv list the transport quotes;
``sudo -n`` is prepended to renice only when the policy says ``sudo: true``. A job's processes are the
pids its scheduler names, or, when those lead the job, each one's process group and descendants (``ps
-e -o pid=,ppid=,pgid=,ni=``). Processes already at the target nice are left alone, so enforcement
after every collect only acts (and logs) on change.
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
from typing import Any, NamedTuple

from metasched.domain.errors import MetaschedError
from metasched.domain.ports import Adapter, HostRunner, JobPids, JobProcesses
from metasched.policy import ActivePolicy, active_policies, record_actions
from metasched.settings import Config, DestinationConfig
from metasched.store import Store

log = logging.getLogger("metasched.enforce")

MAX_NICE = 19
PS_ARGV = ("ps", "-e", "-o", "pid=,ppid=,pgid=,ni=")


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


def job_processes(found: JobPids, table: dict[int, Proc]) -> list[int]:
    """The pids to act on: the scheduler's own that are alive, or every leader's family."""
    if not found.leaders:
        return [p for p in found.pids if p in table]
    return sorted({p for leader in found.pids for p in family(table, leader)})


@dataclass(frozen=True, slots=True)
class Wiring:
    """What the application layer hands enforcement: each destination's adapter and a connection opener."""

    adapter_for: Callable[[DestinationConfig], Adapter]  # raises MetaschedError for an unknown scheduler
    connect: Callable[[DestinationConfig], HostRunner]


class _Hosts:
    """Connections opened on demand and reused within one enforcement run."""

    def __init__(
        self, config: Config, nodes: Sequence[str], connect: Callable[[DestinationConfig], HostRunner]
    ) -> None:
        self.nodes = [d for n in nodes if (d := config.destination(n)) is not None]
        self._connect = connect
        self._open: dict[str, HostRunner] = {}

    def for_node(self, node: str, fallback: DestinationConfig) -> HostRunner:
        match = next((d for d in self.nodes if node in (d.id, d.host) or d.id == f"node-{node}"), None)
        return self.get(match or fallback)

    def get(self, dest: DestinationConfig) -> HostRunner:
        if dest.id not in self._open:
            self._open[dest.id] = self._connect(dest)
        return self._open[dest.id]

    def close(self) -> None:
        for t in self._open.values():
            with contextlib.suppress(Exception):
                t.close()


@dataclass(frozen=True, slots=True)
class _DestinationNodes:
    """``NodeRunners`` of one scheduler destination: its nodes' hosts, else its own host."""

    hosts: _Hosts
    dest: DestinationConfig

    def for_node(self, node: str) -> HostRunner:
        return self.hosts.for_node(node, self.dest)


@contextlib.contextmanager
def _hosts(
    config: Config, nodes: Sequence[str], connect: Callable[[DestinationConfig], HostRunner]
) -> Iterator[_Hosts]:
    hosts = _Hosts(config, nodes, connect)
    try:
        yield hosts
    finally:
        hosts.close()


def enforce(
    config: Config,
    store: Store,
    wiring: Wiring,
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
        with _hosts(config, policy.config.nodes, wiring.connect) as hosts:
            for dest_id in policy.config.destinations:
                _enforce_destination(config, policy, dest_id, wiring, hosts, report, dry_run, now)
    if not dry_run:
        record_actions(store, [a.to_dict() for a in report.actions])
    return report


def _enforce_destination(
    config: Config,
    policy: ActivePolicy,
    dest_id: str,
    wiring: Wiring,
    hosts: _Hosts,
    report: Report,
    dry_run: bool,
    now: Callable[[], datetime],
) -> None:
    nice = target_nice(policy, dest_id)
    dest = config.destination(dest_id)
    if nice is None or dest is None:
        return
    try:
        adapter: object = wiring.adapter_for(dest)
    except MetaschedError:
        adapter = None
    if not isinstance(adapter, JobProcesses):
        report.notes.append(f"{dest_id}: enforcement not supported for {dest.scheduler} (job pids unknown)")
        return
    try:
        running = adapter.running_jobs(hosts.get(dest), _DestinationNodes(hosts, dest))
    except MetaschedError as exc:
        report.notes.append(f"{dest_id}: running jobs unknown: {exc}")
        log.warning("enforce %s: running jobs unknown: %s", dest_id, exc)
        return
    for note in running.notes:
        report.notes.append(note)
        log.warning("enforce %s", note)
    for job, node in running.jobs:
        try:
            runner = hosts.for_node(node, dest)
            found = running.pids(runner, job, node)
            table = parse_ps(runner.run(PS_ARGV))
        except MetaschedError as exc:
            report.notes.append(f"{dest_id} job {job} on {node}: pids unknown: {exc}")
            log.warning("enforce %s job %s on %s: pids unknown: %s", dest_id, job, node, exc)
            continue
        todo = [p for p in job_processes(found, table) if table[p].nice != nice]
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
