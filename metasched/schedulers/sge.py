"""Son of Grid Engine / Univa-style Grid Engine: ``qstat -xml`` and ``qhost -xml`` into a Snapshot.

Commands (XML everywhere, so column widths and the user's ``sge_qstat`` defaults cannot break parsing):

- ``qstat -xml -r -u '*'``: every user's jobs; ``-r`` adds resource requests (memory), the requested queue
  and ``predecessor_jobs`` (``-hold_jid``), which tell dependency holds apart from demand.
- ``qstat -f -xml``: queue instances (``queue@host``) with slots used/total and state flags.
- ``qhost -xml -F load_short,load_medium,load_long``: cores, memory (``23.5G``) and load per host.
- ``date +%z``: the head node's UTC offset, because qstat prints local times without a zone.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

from metasched.domain.errors import CollectError, ParseError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Job, JobState, Node, Partition, Snapshot
from metasched.domain.ports import HostRunner, JobPids, NodeRunners, Runner
from metasched.settings import DestinationConfig

QSTAT_JOBS_ARGS = ("-xml", "-r", "-u", "*")
QSTAT_QUEUES_ARGS = ("-f", "-xml")
QHOST_ARGS = ("-xml", "-F", "load_short,load_medium,load_long")

QSTAT_JOBS_CMD = "qstat -xml -r -u '*'"
QSTAT_QUEUES_CMD = "qstat -f -xml"
QHOST_CMD = "qhost -xml"
DATE_CMD = "date +%z"

# Queue-instance state letters that stop the scheduler from dispatching there: alarm (a/A), unknown
# (execd not reporting), disabled (d/D), error, orphaned, suspended (s/S, C calendar).
UNAVAILABLE_QUEUE_FLAGS = frozenset("aAuCdDEosS")
# Per-slot memory requests, in order of preference (h_vmem is the usual consumable).
MEMORY_REQUESTS = ("h_vmem", "mem_free", "virtual_free", "s_vmem", "h_rss", "mem_req")
# Pending array ranges larger than this stay one aggregated job instead of one row per task.
MAX_ARRAY_EXPAND = 1000

_UNITS = {"": 1 / (1024 * 1024), "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtTpP]?)\s*\Z")
_OFFSET = re.compile(r"\s*([-+])(\d{2}):?(\d{2})\s*\Z")
_TASK_RANGE = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?\Z")


@dataclass(frozen=True, slots=True)
class QueueInstance:
    """One ``queue@host`` line of ``qstat -f``."""

    queue: str
    host: str
    slots_used: int
    slots_total: int
    state: str  # SGE flags, "" when fine

    @property
    def available(self) -> bool:
        return not (set(self.state) & UNAVAILABLE_QUEUE_FLAGS)


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One execution host of ``qhost`` (the ``global`` pseudo-host is dropped)."""

    name: str
    num_proc: int | None
    mem_total_mb: int | None
    mem_used_mb: int | None
    load_1: float | None
    load_5: float | None
    load_15: float | None
    load_avg: float | None


def memory_mb(text: str) -> int:
    """SGE memory text (``23.5G``, ``512.0M``, ``1.0T``, bare bytes) in MB (MiB, as SGE means it)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a memory size: {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_utc_offset(text: str) -> timezone:
    """``date +%z`` output (``+0100``) as a fixed-offset timezone."""
    m = _OFFSET.match(text)
    if not m:
        raise ParseError(f"{DATE_CMD}: cannot read UTC offset {text.strip()[:40]!r}")
    sign = -1 if m.group(1) == "-" else 1
    return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))


def sge_time(text: str, tz: timezone) -> datetime:
    """qstat's zone-less local time (``2026-11-23T19:43:29``, or epoch seconds) as aware UTC."""
    text = text.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(UTC)


def job_state(raw: str, has_predecessors: bool = False) -> JobState:
    """Normalise SGE state letters; held (h), error (E) and ``-hold_jid`` waits are HELD, not demand.

    Precedence: an error (E) wins; then suspension (s, S, T: not using its slots now, OTHER); then
    running or transferring (r, t: a hold applied to a running job, ``hr``, does not stop it); a job
    being deleted while running (``dr``) stays RUNNING, since it holds its slots until the kill lands;
    a deleted job that never ran (``dqw``) is OTHER; then holds and predecessors; then queued/waiting.
    """
    if "E" in raw:
        return HELD
    if set(raw) & set("sST"):
        return OTHER
    if "r" in raw or "t" in raw:
        return RUNNING
    if "d" in raw:
        return OTHER
    if "h" in raw or has_predecessors:
        return HELD
    if "q" in raw or "w" in raw:
        return PENDING
    return OTHER


def _root(text: str, command: str, tag: str) -> ET.Element:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ParseError(f"{command}: malformed XML ({exc})") from None
    if root.tag != tag:
        raise ParseError(f"{command}: expected <{tag}> document, got <{root.tag}>")
    return root


def _text(el: ET.Element, tag: str, command: str, required: bool = True) -> str:
    child = el.find(tag)
    if child is None or child.text is None:
        if required:
            raise ParseError(f"{command}: <{el.tag}> without <{tag}>")
        return ""
    return child.text.strip()


def _int(el: ET.Element, tag: str, command: str, default: int | None = None) -> int:
    raw = _text(el, tag, command, required=default is None)
    if not raw:
        return default if default is not None else 0
    try:
        return int(raw)
    except ValueError:
        raise ParseError(f"{command}: <{tag}> is not an integer: {raw!r}") from None


def _task_ids(spec: str) -> list[int] | None:
    """Expand ``1-10:2,15`` to task ids; None when the spec is not a range list or too large."""
    ids: list[int] = []
    for part in spec.split(","):
        m = _TASK_RANGE.match(part.strip())
        if not m:
            return None
        first = int(m.group(1))
        last = int(m.group(2) or first)
        step = int(m.group(3) or 1)
        if step < 1 or last < first or len(ids) + (last - first) // step + 1 > MAX_ARRAY_EXPAND:
            return None
        ids.extend(range(first, last + 1, step))
    return ids


def _job_memory(el: ET.Element, slots: int) -> int:
    requests = {r.get("name", ""): (r.text or "").strip() for r in el.iter("hard_request")}
    for name in MEMORY_REQUESTS:
        if requests.get(name):
            try:
                return memory_mb(requests[name]) * slots
            except ValueError:
                return 0
    return 0


def parse_qstat_jobs(text: str, tz: timezone = UTC) -> list[Job]:
    """``qstat -xml [-r] -u '*'``: running jobs under ``queue_info``, the rest under ``job_info``."""
    cmd = QSTAT_JOBS_CMD
    root = _root(text, cmd, "job_info")
    jobs: list[Job] = []
    for el in root.iter("job_list"):
        number = _text(el, "JB_job_number", cmd)
        raw = _text(el, "state", cmd)
        slots = _int(el, "slots", cmd, default=1)
        has_pred = el.find("predecessor_jobs") is not None
        state = job_state(raw, has_pred)
        queue_name = _text(el, "queue_name", cmd, required=False)
        queue, _, host = queue_name.partition("@")
        if not queue:
            queue = _text(el, "hard_req_queue", cmd, required=False)
        name = _text(el, "full_job_name", cmd, required=False) or _text(el, "JB_name", cmd, required=False)
        try:
            start_raw = _text(el, "JAT_start_time", cmd, required=False)
            submit_raw = _text(el, "JB_submission_time", cmd, required=False)
            start = sge_time(start_raw, tz) if start_raw else None
            submit = sge_time(submit_raw, tz) if submit_raw else None
        except ValueError as exc:
            raise ParseError(f"{cmd}: job {number}: bad time ({exc})") from None
        if state != HELD:
            reason = ""  # a hold or dependency on a job already running no longer keeps it waiting
        elif "E" in raw:
            reason = "error"
        elif has_pred:
            reason = "dependency"
        elif "h" in raw:
            reason = "hold"
        else:
            reason = ""
        job = Job(
            job_id=number,
            state=state,
            partition=queue,
            name=name,
            user=_text(el, "JB_owner", cmd, required=False),
            raw_state=raw,
            reason=reason,
            cores=slots,
            mem_mb=_job_memory(el, slots),
            submit_time=submit,
            start_time=start,
            nodes=host,
        )
        tasks = _text(el, "tasks", cmd, required=False)
        jobs.extend(_expand_tasks(job, tasks))
    return jobs


def _expand_tasks(job: Job, tasks: str) -> Iterator[Job]:
    if not tasks:
        yield job
        return
    ids = _task_ids(tasks)
    if ids is None:
        # Huge or odd range: one row standing for all of it, so demand is not lost.
        yield replace(job, job_id=f"{job.job_id}_[{tasks}]")
        return
    for task in ids:
        yield replace(job, job_id=f"{job.job_id}_{task}")


def parse_qstat_queues(text: str) -> list[QueueInstance]:
    """``qstat -f -xml``: one QueueInstance per ``Queue-List`` (jobs listed in it are ignored)."""
    cmd = QSTAT_QUEUES_CMD
    root = _root(text, cmd, "job_info")
    instances: list[QueueInstance] = []
    for el in root.iter("Queue-List"):
        full = _text(el, "name", cmd)
        queue, sep, host = full.partition("@")
        if not sep or not queue or not host:
            raise ParseError(f"{cmd}: queue instance name {full!r} is not queue@host")
        instances.append(
            QueueInstance(
                queue=queue,
                host=host,
                slots_used=_int(el, "slots_used", cmd),
                slots_total=_int(el, "slots_total", cmd),
                state=_text(el, "state", cmd, required=False),
            )
        )
    return instances


def _float(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "-"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_qhost(text: str) -> list[HostInfo]:
    """``qhost -xml [-F load_short,...]``: execution hosts; ``-`` values mean the execd is not reporting."""
    cmd = QHOST_CMD
    root = _root(text, cmd, "qhost")
    hosts: list[HostInfo] = []
    for el in root.findall("host"):
        name = el.get("name")
        if not name:
            raise ParseError(f"{cmd}: <host> without name")
        if name == "global":
            continue
        values = {v.get("name", ""): (v.text or "").strip() for v in el.findall("hostvalue")}
        resources = {v.get("name", ""): (v.text or "").strip() for v in el.findall("resourcevalue")}
        if "num_proc" not in values:
            raise ParseError(f"{cmd}: host {name} has no num_proc")
        try:
            num_proc = None if values["num_proc"] in ("", "-") else int(float(values["num_proc"]))
            mem_total = values.get("mem_total", "-")
            mem_used = values.get("mem_used", "-")
            hosts.append(
                HostInfo(
                    name=name,
                    num_proc=num_proc,
                    mem_total_mb=None if mem_total in ("", "-") else memory_mb(mem_total),
                    mem_used_mb=None if mem_used in ("", "-") else memory_mb(mem_used),
                    load_1=_float(resources.get("load_short")),
                    load_5=_float(resources.get("load_medium")),
                    load_15=_float(resources.get("load_long")),
                    load_avg=_float(values.get("load_avg")),
                )
            )
        except ValueError as exc:
            raise ParseError(f"{cmd}: host {name}: {exc}") from None
    return hosts


def build_snapshot(hosts: list[HostInfo], instances: list[QueueInstance], jobs: list[Job]) -> Snapshot:
    """Join hosts, queue instances and jobs: nodes = hosts, partitions = cluster queues.

    A host's schedulable cores are its queue slots capped by its processors (queues on one host
    usually overlap); it is available when its execd reports and one of its queue instances accepts work.
    """
    by_host: dict[str, list[QueueInstance]] = defaultdict(list)
    by_queue: dict[str, list[QueueInstance]] = defaultdict(list)
    for qi in instances:
        by_host[qi.host].append(qi)
        by_queue[qi.queue].append(qi)
    mem_alloc: dict[str, int] = defaultdict(int)
    for job in jobs:
        if job.state == RUNNING and job.nodes:
            mem_alloc[job.nodes] += job.mem_mb

    nodes: list[Node] = []
    for h in hosts:
        qis = by_host.get(h.name, [])
        slots_total = sum(q.slots_total for q in qis)
        slots_used = sum(q.slots_used for q in qis)
        if not qis:
            cores_total = h.num_proc or 0
        elif h.num_proc is None:
            cores_total = slots_total
        else:
            cores_total = min(h.num_proc, slots_total)
        flags = "".join(sorted({c for q in qis for c in q.state}))
        reporting = h.num_proc is not None and h.load_avg is not None
        if not reporting:
            reason = "execd not reporting"
        elif not qis:
            reason = "no queue instance"
        elif not any(q.available for q in qis):
            reason = "queue instances " + ",".join(f"{q.queue}:{q.state}" for q in qis)
        else:
            reason = ""
        mem_total = h.mem_total_mb or 0
        nodes.append(
            Node(
                name=h.name,
                state=flags or ("ok" if reporting else "unknown"),
                available=not reason,
                cores_total=cores_total,
                cores_alloc=min(slots_used, cores_total),
                mem_total_mb=mem_total,
                mem_alloc_mb=min(mem_alloc.get(h.name, 0), mem_total) if mem_total else 0,
                mem_free_mb=(mem_total - h.mem_used_mb) if h.mem_used_mb is not None and mem_total else None,
                load_1=h.load_1 if h.load_1 is not None else h.load_avg,
                load_5=h.load_5,
                load_15=h.load_15,
                partitions=tuple(sorted({q.queue for q in qis})),
                reason=reason,
            )
        )

    partitions: list[Partition] = []
    for queue, qis in sorted(by_queue.items()):
        up = [q for q in qis if q.available]
        flags = "".join(sorted({c for q in qis for c in q.state}))
        partitions.append(
            Partition(
                name=queue,
                state="up" if up else (flags or "down"),
                available=bool(up),
                nodes_total=len({q.host for q in qis}),
                cores_total=sum(q.slots_total for q in qis),
            )
        )
    return Snapshot(nodes=nodes, partitions=partitions, jobs=jobs)


def spool_dir(qconf_sconf: str) -> str | None:
    """``execd_spool_dir`` from ``qconf -sconf``."""
    for line in qconf_sconf.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "execd_spool_dir":
            return parts[1]
    return None


def job_leader(runner: HostRunner, job: str, spool: str | None) -> int:
    """The job's process-group leader: ``<spool>/<host>/active_jobs/<job>.<task>/job_pid``."""
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


@dataclass(frozen=True, slots=True)
class SGERunningJobs:
    """``RunningJobs`` of one SGE destination: each job's leader is read from the execd spool."""

    jobs: Sequence[tuple[str, str]]
    spool: str | None
    notes: Sequence[str] = ()

    def pids(self, runner: HostRunner, job: str, node: str) -> JobPids:
        return JobPids((job_leader(runner, job, self.spool),), leaders=True)


class SGEAdapter:
    """Grid Engine over the destination's runner; ``dest.sge`` says where binaries and the cell live."""

    def __init__(self, dest: DestinationConfig) -> None:
        self.dest = dest

    def _binary(self, name: str) -> str:
        bin_dir = self.dest.sge.bin_dir
        return f"{bin_dir.rstrip('/')}/{name}" if bin_dir else name

    @property
    def env(self) -> Mapping[str, str]:
        env: dict[str, str] = {}
        if self.dest.sge.root:
            env["SGE_ROOT"] = self.dest.sge.root
        if self.dest.sge.cell:
            env["SGE_CELL"] = self.dest.sge.cell
        return env

    def collect(self, runner: Runner) -> Snapshot:
        env = self.env
        tz = parse_utc_offset(runner.run(["date", "+%z"], env=env))
        jobs = parse_qstat_jobs(runner.run([self._binary("qstat"), *QSTAT_JOBS_ARGS], env=env), tz)
        queues = parse_qstat_queues(runner.run([self._binary("qstat"), *QSTAT_QUEUES_ARGS], env=env))
        hosts = parse_qhost(runner.run([self._binary("qhost"), *QHOST_ARGS], env=env))
        return build_snapshot(hosts, queues, jobs)

    def running_jobs(self, head: HostRunner, nodes: NodeRunners) -> SGERunningJobs:
        """Enforcement's ``JobProcesses``: running jobs and hosts (array tasks as ``N_T``) from
        ``qstat -xml``, the execd spool directory from ``qconf -sconf``."""
        env = self.env
        jobs = parse_qstat_jobs(head.run([self._binary("qstat"), "-xml", "-u", "*", "-s", "r"], env=env))
        spool = spool_dir(head.run([self._binary("qconf"), "-sconf"], env=env))
        return SGERunningJobs([(j.job_id, j.nodes) for j in jobs if j.state == RUNNING and j.nodes], spool)
