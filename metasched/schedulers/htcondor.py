"""HTCondor pool: startd slot ads and the schedd queue, as ``-json`` with explicit ``-attributes``.

JSON rather than ``-af``: string values (batch names, hold reasons) may contain spaces, and missing
attributes are simply absent instead of a positional ``undefined``. Expressions that are not literals
(a default ``RequestMemory``) come out as ``"\\/Expr(...)\\/"`` strings and count as unknown (0).

Slot semantics: a partitionable slot advertises its unclaimed remainder in ``Cpus``/``Memory``/``GPUs``
and its size in ``TotalSlot*``; its dynamic children are claimed resources already counted in that
difference, so they are not added again. Static slots are free only when Unclaimed.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from metasched.domain.errors import CollectError, ParseError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Job, Node, Partition, Snapshot
from metasched.domain.ports import HostRunner, JobPids, NodeRunners, Runner
from metasched.settings import DestinationConfig

SLOT_ATTRIBUTES = (
    "Name",
    "Machine",
    "SlotType",
    "PartitionableSlot",
    "DynamicSlot",
    "State",
    "Activity",
    "Cpus",
    "Memory",
    "GPUs",
    "TotalSlotCpus",
    "TotalSlotMemory",
    "TotalSlotGPUs",
    "LoadAvg",
    "TotalLoadAvg",
    "LastHeardFrom",
    "Absent",
)
JOB_ATTRIBUTES = (
    "ClusterId",
    "ProcId",
    "JobStatus",
    "Owner",
    "JobBatchName",
    "Cmd",
    "RequestCpus",
    "RequestMemory",
    "RequestGpus",
    "QDate",
    "JobCurrentStartDate",
    "JobStartDate",
    "RemoteHost",
    "HoldReason",
)
STATUS_ARGS = ("-json", "-attributes", ",".join(SLOT_ATTRIBUTES))
ABSENT_ARGS = ("-absent", "-json", "-attributes", ",".join(SLOT_ATTRIBUTES))
QUEUE_ARGS = ("-allusers", "-json", "-attributes", ",".join(JOB_ATTRIBUTES))
STATUS_CMD = "condor_status -json"
ABSENT_CMD = "condor_status -absent -json"
QUEUE_CMD = "condor_q -allusers -json"

POOL = "pool"  # HTCondor has no queues: the whole pool is one partition
# A startd this much behind the freshest ad (3 missed default UPDATE_INTERVALs) counts as down.
STALE_AFTER_S = 900.0
# Slot states in which a slot accepts no new work (Owner policy, draining, shutting down).
UNAVAILABLE_STATES = frozenset({"Owner", "Drained", "Shutdown", "Delete"})
BUSY_STATES = frozenset({"Claimed", "Matched", "Preempting", "Backfill"})
JOB_STATES = {1: PENDING, 2: RUNNING, 3: OTHER, 4: OTHER, 5: HELD, 6: RUNNING, 7: OTHER}
JOB_STATUS_NAMES = {
    1: "Idle",
    2: "Running",
    3: "Removed",
    4: "Completed",
    5: "Held",
    6: "Transferring Output",
    7: "Suspended",
}


def parse_ads(text: str, command: str) -> list[dict[str, Any]]:
    """A ``-json`` listing: a JSON array of ClassAds. HTCondor prints nothing at all for zero ads."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{command}: malformed JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(ad, dict) for ad in data):
        raise ParseError(f"{command}: expected a JSON array of ClassAds")
    return data


def _number(ad: Mapping[str, Any], attr: str, default: float = 0) -> float:
    """A numeric attribute; unevaluated expressions and other non-numbers give ``default``."""
    value = ad.get(attr)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)


def _int(ad: Mapping[str, Any], attr: str, default: int = 0) -> int:
    return int(_number(ad, attr, default))


def _str(ad: Mapping[str, Any], attr: str) -> str:
    value = ad.get(attr)
    return value if isinstance(value, str) else ""


def _epoch(ad: Mapping[str, Any], attr: str) -> datetime | None:
    seconds = _number(ad, attr, 0)
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


def _slot_kind(ad: Mapping[str, Any]) -> str:
    kind = _str(ad, "SlotType")
    if kind:
        return kind
    if ad.get("PartitionableSlot") is True:
        return "Partitionable"
    if ad.get("DynamicSlot") is True:
        return "Dynamic"
    return "Static"


def _machine(ad: Mapping[str, Any], command: str) -> str:
    machine = _str(ad, "Machine") or _str(ad, "Name").rpartition("@")[2]
    if not machine:
        raise ParseError(f"{command}: slot ad without Machine or Name")
    return machine


def build_nodes(slots: Sequence[Mapping[str, Any]], absent: Sequence[Mapping[str, Any]] = ()) -> list[Node]:
    """One Node per machine from its slot ads; absent or stale startds are unavailable nodes.

    Staleness is judged against the freshest ``LastHeardFrom`` in the same listing (the collector's
    clock), so clock skew between the head node and metasched does not matter.
    """
    by_machine: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for ad in slots:
        by_machine[_machine(ad, STATUS_CMD)].append(ad)
    freshest = max((_number(ad, "LastHeardFrom") for ad in slots), default=0.0)
    nodes: list[Node] = []
    for machine, ads in sorted(by_machine.items()):
        nodes.append(_machine_node(machine, ads, freshest or None))
    seen = set(by_machine)
    absent_by_machine: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for ad in absent:
        absent_by_machine[_machine(ad, ABSENT_CMD)].append(ad)
    for machine, ads in sorted(absent_by_machine.items()):
        if machine in seen:
            continue
        node = _machine_node(machine, ads, None)
        heard = max((_number(a, "LastHeardFrom") for a in ads), default=0)
        since = f" since {datetime.fromtimestamp(heard, UTC).isoformat()}" if heard else ""
        nodes.append(_replace_availability(node, "absent", f"startd absent{since}"))
    return nodes


def _replace_availability(node: Node, state: str, reason: str) -> Node:
    return replace(
        node, state=state, available=False, reason=reason, cores_alloc=0, mem_alloc_mb=0, gpus_alloc=0
    )


def _machine_node(machine: str, ads: Sequence[Mapping[str, Any]], freshest: float | None) -> Node:
    """Sum a machine's slots; ``freshest`` is the newest LastHeardFrom of the listing (None: no check)."""
    cores = mem = gpus = 0
    cores_used = mem_used = gpus_used = 0
    states: list[str] = []
    usable = False
    load: float | None = None
    heard = 0.0
    for ad in ads:
        kind = _slot_kind(ad)
        state = _str(ad, "State")
        heard = max(heard, _number(ad, "LastHeardFrom"))
        if "TotalLoadAvg" in ad:
            load = _number(ad, "TotalLoadAvg")
        elif load is None and "LoadAvg" in ad:
            load = _number(ad, "LoadAvg")
        if kind == "Dynamic":
            continue  # already inside its partitionable parent's TotalSlot* minus remainder
        states.append(f"{kind}:{state or '?'}")
        if kind == "Partitionable":
            total_c = _int(ad, "TotalSlotCpus", _int(ad, "Cpus"))
            total_m = _int(ad, "TotalSlotMemory", _int(ad, "Memory"))
            total_g = _int(ad, "TotalSlotGPUs", _int(ad, "GPUs"))
            free_ok = state not in UNAVAILABLE_STATES
            free_c = _int(ad, "Cpus") if free_ok else 0
            free_m = _int(ad, "Memory") if free_ok else 0
            free_g = _int(ad, "GPUs") if free_ok else 0
        else:
            total_c, total_m, total_g = _int(ad, "Cpus"), _int(ad, "Memory"), _int(ad, "GPUs")
            is_free = state == "Unclaimed"
            free_c, free_m, free_g = (total_c, total_m, total_g) if is_free else (0, 0, 0)
        if state not in UNAVAILABLE_STATES:
            usable = True
        cores += total_c
        mem += total_m
        gpus += total_g
        cores_used += max(total_c - free_c, 0)
        mem_used += max(total_m - free_m, 0)
        gpus_used += max(total_g - free_g, 0)
    if not states:  # only dynamic slots reported: the parent is missing, count what they hold
        cores = cores_used = sum(_int(a, "Cpus") for a in ads)
        mem = mem_used = sum(_int(a, "Memory") for a in ads)
        gpus = gpus_used = sum(_int(a, "GPUs") for a in ads)
        states = ["Dynamic:Claimed"]
        usable = True
    if not usable:
        reason = "no slot accepts jobs (" + ", ".join(sorted(set(states))) + ")"
    elif freshest is not None and heard and (freshest - heard) > STALE_AFTER_S:
        reason = f"startd not heard from for {int(freshest - heard)} s (others were)"
        usable = False
    else:
        reason = ""
    return Node(
        name=machine,
        state=",".join(sorted(set(states))),
        available=usable,
        cores_total=cores,
        cores_alloc=cores_used,
        mem_total_mb=mem,
        mem_alloc_mb=mem_used,
        gpus_total=gpus,
        gpus_alloc=gpus_used,
        load_1=load,
        partitions=(POOL,),
        reason=reason,
    )


def parse_condor_status(text: str) -> list[Node]:
    """``condor_status -json -attributes ...`` into nodes (see build_nodes)."""
    return build_nodes(parse_ads(text, STATUS_CMD))


def parse_condor_q(text: str) -> list[Job]:
    """``condor_q -allusers -json -attributes ...``: one Job per ``ClusterId.ProcId``."""
    jobs: list[Job] = []
    for ad in parse_ads(text, QUEUE_CMD):
        if not isinstance(ad.get("ClusterId"), int) or not isinstance(ad.get("JobStatus"), int):
            raise ParseError(f"{QUEUE_CMD}: job ad without integer ClusterId/JobStatus")
        status = ad["JobStatus"]
        remote = _str(ad, "RemoteHost")
        name = _str(ad, "JobBatchName") or posixpath.basename(_str(ad, "Cmd"))
        jobs.append(
            Job(
                job_id=f"{ad['ClusterId']}.{_int(ad, 'ProcId')}",
                state=JOB_STATES.get(status, OTHER),
                partition=POOL,
                name=name,
                user=_str(ad, "Owner"),
                raw_state=JOB_STATUS_NAMES.get(status, str(status)),
                reason=_str(ad, "HoldReason") if status == 5 else "",
                cores=max(_int(ad, "RequestCpus", 1), 1),
                mem_mb=_int(ad, "RequestMemory"),
                gpus=_int(ad, "RequestGpus"),
                submit_time=_epoch(ad, "QDate"),
                start_time=(_epoch(ad, "JobCurrentStartDate") or _epoch(ad, "JobStartDate"))
                if status in (2, 6, 7)
                else None,
                nodes=remote.rpartition("@")[2],
            )
        )
    return jobs


def build_snapshot(nodes: list[Node], jobs: list[Job]) -> Snapshot:
    up = [n for n in nodes if n.available]
    partition = Partition(
        name=POOL,
        is_default=True,
        state="up" if up else "down",
        available=bool(up),
        nodes_total=len(nodes),
        cores_total=sum(n.cores_total for n in nodes),
    )
    return Snapshot(nodes=nodes, partitions=[partition] if nodes else [], jobs=jobs)


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


@dataclass(slots=True)
class HTCondorRunningJobs:
    """``RunningJobs`` of one HTCondor pool: each execute host's ``condor_who`` is asked once."""

    jobs: Sequence[tuple[str, str]]
    env: Mapping[str, str]
    notes: Sequence[str] = ()
    listings: dict[str, dict[str, int]] = field(default_factory=dict)  # runner label -> job -> pid

    def pids(self, runner: HostRunner, job: str, node: str) -> JobPids:
        if runner.label not in self.listings:
            self.listings[runner.label] = parse_condor_who(
                runner.run(["condor_who", "-af", "JobId", "#PID"], env=self.env)
            )
        pid = self.listings[runner.label].get(job)
        if pid is None:
            raise CollectError(f"condor_who on {runner.label} names no pid for job {job}")
        return JobPids((pid,), leaders=True)


class HTCondorAdapter:
    """Runs condor_status (live and absent startds) and condor_q on the destination's submit host."""

    def __init__(self, dest: DestinationConfig) -> None:
        self.dest = dest

    def collect(self, runner: Runner) -> Snapshot:
        slots = parse_ads(runner.run(["condor_status", *STATUS_ARGS]), STATUS_CMD)
        absent = parse_ads(runner.run(["condor_status", *ABSENT_ARGS]), ABSENT_CMD)
        jobs = parse_condor_q(runner.run(["condor_q", *QUEUE_ARGS]))
        return build_snapshot(build_nodes(slots, absent), jobs)

    def running_jobs(self, head: HostRunner, nodes: NodeRunners) -> HTCondorRunningJobs:
        """Enforcement's ``JobProcesses``: running jobs and their execute hosts from ``condor_q``; on
        each execute host ``condor_who`` gives each job's pid as the startd and starter know it."""
        argv = ["condor_q", "-allusers", "-constraint", "JobStatus == 2"]
        argv += ["-af", "ClusterId", "ProcId", "RemoteHost"]
        return HTCondorRunningJobs(parse_condor_q_running(head.run(argv, env=self.dest.env)), self.dest.env)
