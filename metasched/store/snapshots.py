"""The write side: destination rows, snapshot replacement (with its history) and collect runs.

A snapshot write is one short transaction per destination; everything that can be computed before
it is. Readers see the old snapshot or the new one, never a mix, and a crash mid-write leaves the old.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from metasched.domain.errors import CollectError
from metasched.domain.jobs import HELD, PENDING, RUNNING, Job, Node, Snapshot
from metasched.domain.start_estimates import reduce
from metasched.store import models
from metasched.store.convert import naive_from_db, naive_utc
from metasched.store.database import Database, one_line
from metasched.store.galaxy import parse_galaxy_job_name
from metasched.store.history import prune, record_vanished, refresh_samples
from metasched.store.start_estimates import encode

log = logging.getLogger(__name__)
T = TypeVar("T")

HISTORY_DAYS = 90  # finished-job history and collect runs older than this are pruned
MAX_GAP_S = 3600.0  # see write_snapshot: run times across longer collect gaps are not trusted

NODE_COLUMNS = (
    "destination",
    "name",
    "state",
    "available",
    "cores_total",
    "cores_alloc",
    "mem_total_mb",
    "mem_alloc_mb",
    "mem_free_mb",
    "gpus_total",
    "gpus_alloc",
    "load_1",
    "load_5",
    "load_15",
    "partitions",
    "reason",
)
PARTITION_COLUMNS = (
    "destination",
    "name",
    "is_default",
    "state",
    "available",
    "nodes_total",
    "cores_total",
    "limits",
)
JOB_COLUMNS = (
    "destination",
    "job_id",
    "state",
    "raw_state",
    "partition",
    "name",
    "user",
    "reason",
    "cores",
    "mem_mb",
    "gpus",
    "submit_time",
    "start_time",
    "nodes",
    "start_estimate",
    "estimated_at",
    "galaxy_job_id",
    "tool_key",
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    jobs: int
    finished: int  # jobs recorded into finished-job history by this write


class StoreWriteError(CollectError):
    """A snapshot could not be stored (database error); its transaction rolled back, the old one stays.

    A CollectError, so collect records it as that destination's failure and goes on with the others.
    """


def sync_destinations(db: Database, destinations: Iterable[tuple[str, str, str]]) -> None:
    """Ensure a row per configured (id, scheduler, host); rows of removed destinations stay."""
    D = models.Destination
    with db.write_tx():
        for dest_id, scheduler, host in destinations:
            db.bind(
                D.insert(id=dest_id, scheduler=scheduler, host=host).on_conflict(
                    conflict_target=[D.id], update={D.scheduler: scheduler, D.host: host}
                )
            ).execute()


def set_disabled(db: Database, dest_id: str, reason: str | None, until: datetime | None) -> bool:
    """Operator disable (``reason`` given) or enable (``reason`` None); False when no such row.

    A disable lives in the destination's row, so every DestinationSummary carries it: rank marks the
    destination infeasible until it is enabled or ``until`` passes (None: until enabled), status shows
    it, and a collect never clears it.
    """
    D = models.Destination
    stored_until = until.astimezone(UTC).replace(tzinfo=None) if until is not None and reason else None
    with db.write_tx():
        changed = db.bind(
            D.update(disabled_reason=reason, disabled_until=stored_until).where(D.id == dest_id)
        ).execute()
    return bool(changed)


def write_snapshot(
    db: Database,
    dest_id: str,
    snapshot: Snapshot,
    *,
    run_id: str,
    started: datetime,
    finished: datetime,
    history_days: int = HISTORY_DAYS,
    max_gap_s: float = MAX_GAP_S,
) -> WriteResult:
    """Replace the destination's nodes/partitions/jobs and summary, record history and the run.

    All in one transaction. History: a job tracked in the previous snapshot (pending, running, or
    another state with a start time) and absent now finished at ``finished`` (the collect that first
    missed it, so an upper bound within one interval):

    - last seen running: queue_s = start - submit, run_s = finished - start;
    - last seen pending: cancelled, or started and ended between two collects; which one is
      unknowable, so queue_s, run_s and start_time are None (the row still counts);
    - when the previous good snapshot is older than ``max_gap_s`` (the destination was
      unreachable for a while), the end is too uncertain: run_s is None, queue_s is kept.

    Negative durations (clock skew between cluster and collector) are clamped to 0. History and
    run records of this destination older than ``history_days`` are pruned.
    """
    nodes = _unique(snapshot.nodes, lambda n: n.name, "node", dest_id)
    partitions = _unique(snapshot.partitions, lambda p: p.name, "partition", dest_id)
    jobs = _unique(snapshot.jobs, lambda j: j.job_id, "job", dest_id)
    summary = _summarize(nodes, jobs)
    summary["start_estimates"] = encode(reduce(jobs, finished))
    node_rows = [
        (
            dest_id,
            n.name,
            n.state,
            n.available,
            n.cores_total,
            n.cores_alloc,
            n.mem_total_mb,
            n.mem_alloc_mb,
            n.mem_free_mb,
            n.gpus_total,
            n.gpus_alloc,
            n.load_1,
            n.load_5,
            n.load_15,
            ",".join(n.partitions),
            n.reason,
        )
        for n in nodes
    ]
    partition_rows = [
        (
            dest_id,
            p.name,
            p.is_default,
            p.state,
            p.available,
            p.nodes_total,
            p.cores_total,
            json.dumps(dict(p.limits), sort_keys=True),
        )
        for p in partitions
    ]
    job_rows = []
    dt_in = db.dt_in
    for j in jobs:
        galaxy = parse_galaxy_job_name(j.name)
        job_rows.append(
            (
                dest_id,
                j.job_id,
                j.state,
                j.raw_state,
                j.partition,
                j.name,
                j.user,
                j.reason,
                j.cores,
                j.mem_mb,
                j.gpus,
                dt_in(j.submit_time),
                dt_in(j.start_time),
                j.nodes,
                dt_in(j.start_estimate),
                dt_in(j.estimated_at),
                galaxy[0] if galaxy else None,
                galaxy[1] if galaxy else None,
            )
        )
    try:
        with db.write_tx():
            history = _replace(
                db,
                dest_id,
                summary,
                (node_rows, partition_rows, job_rows),
                {j.job_id for j in jobs},
                naive_utc(finished),
                max_gap_s,
            )
            add_run(db, dest_id, run_id, started, finished, ok=True, error=None)
            cutoff = naive_utc(finished) - timedelta(days=history_days)
            prune(db, dest_id, cutoff)
            refresh_samples(db, dest_id, history, cutoff)
    except db.errors as exc:
        raise StoreWriteError(f"storing the snapshot failed: {one_line(exc)}") from exc
    return WriteResult(jobs=len(job_rows), finished=len(history))


def _replace(
    db: Database,
    dest_id: str,
    summary: dict[str, int | str | None],
    rows: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]],
    current_ids: set[str],
    end: datetime,
    max_gap_s: float,
) -> list[tuple[Any, ...]]:
    """The snapshot part of write_snapshot's transaction; returns the history rows recorded."""
    D, N, P, J = models.Destination, models.Node, models.Partition, models.Job
    ensure_destination(db, dest_id)
    prev_success = naive_from_db(db.scalar(D.select(D.last_success).where(D.id == dest_id)))
    gap_ok = prev_success is not None and (end - prev_success).total_seconds() <= max_gap_s
    history = record_vanished(db, dest_id, current_ids, end, gap_ok)
    for model in (J, N, P):
        db.bind(model.delete().where(model.destination == dest_id)).execute()
    node_rows, partition_rows, job_rows = rows
    db.insert_many(N, NODE_COLUMNS, node_rows)
    db.insert_many(P, PARTITION_COLUMNS, partition_rows)
    db.insert_many(J, JOB_COLUMNS, job_rows)
    db.bind(
        D.update(last_attempt=end, last_success=end, reachable=True, last_error=None, **summary).where(
            D.id == dest_id
        )
    ).execute()
    return history


def record_failure(
    db: Database, dest_id: str, error: str, *, run_id: str, started: datetime, finished: datetime
) -> None:
    """Record a failed attempt; the previous snapshot (nodes, jobs, summary, last_success) stays."""
    D = models.Destination
    with db.write_tx():
        ensure_destination(db, dest_id)
        db.bind(
            D.update(last_attempt=naive_utc(finished), reachable=False, last_error=error).where(
                D.id == dest_id
            )
        ).execute()
        add_run(db, dest_id, run_id, started, finished, ok=False, error=error)


def ensure_destination(db: Database, dest_id: str) -> None:
    """Writes for a destination sync_destinations has not seen still land (scheduler/host unknown)."""
    db.bind(models.Destination.insert(id=dest_id, scheduler="", host="").on_conflict_ignore()).execute()


def add_run(
    db: Database,
    dest_id: str,
    run_id: str,
    started: datetime,
    finished: datetime,
    *,
    ok: bool,
    error: str | None,
) -> None:
    db.bind(
        models.CollectRun.insert(
            run_id=run_id,
            destination_id=dest_id,
            started=naive_utc(started),
            finished=naive_utc(finished),
            ok=ok,
            error=error,
            duration_s=max(0.0, (finished - started).total_seconds()),
        )
    ).execute()


def _unique(items: Sequence[T], key: Callable[[T], Hashable], what: str, dest_id: str) -> list[T]:
    """Drop repeated keys (the first occurrence wins) instead of failing the whole write on a unique index."""
    seen: dict[Hashable, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    if len(seen) != len(items):
        log.warning(
            "%s: %d duplicate %s entries in the snapshot ignored", dest_id, len(items) - len(seen), what
        )
    return list(seen.values())


def _node_mem_free(n: Node) -> int:
    """Scheduler's view (total - allocated) when it tracks allocations; else what the OS reports free.

    A scheduler that allocates memory (Slurm with CR_*_Memory) schedules against total - alloc no
    matter what the page cache holds. With nothing allocated, either the node is idle or memory is
    not tracked (plain nodes, Slurm CR_Core): the OS's free memory is then the better bound.
    """
    free = max(0, n.mem_total_mb - n.mem_alloc_mb)
    if n.mem_alloc_mb == 0 and n.mem_free_mb is not None:
        free = min(free, max(0, n.mem_free_mb))
    return free


def _summarize(nodes: Sequence[Node], jobs: Sequence[Job]) -> dict[str, int | str | None]:
    """Destination summary: capacity over available nodes only; demand from pending (not held) jobs."""
    available = [n for n in nodes if n.available]
    pending = [j for j in jobs if j.state == PENDING]
    running = [j for j in jobs if j.state == RUNNING]
    return {
        "cores_total": sum(n.cores_total for n in available),
        "cores_free": sum(max(0, n.cores_total - n.cores_alloc) for n in available),
        "mem_total_mb": sum(n.mem_total_mb for n in available),
        "mem_free_mb": sum(_node_mem_free(n) for n in available),
        "gpus_total": sum(n.gpus_total for n in available),
        "gpus_free": sum(max(0, n.gpus_total - n.gpus_alloc) for n in available),
        "nodes_total": len(nodes),
        "nodes_unavailable": len(nodes) - len(available),
        "jobs_running": len(running),
        "jobs_queued": len(pending),
        "jobs_held": sum(1 for j in jobs if j.state == HELD),
        "queued_cores": sum(j.cores for j in pending),
        "running_cores": sum(j.cores for j in running),
        "max_node_cores": max((n.cores_total for n in available), default=None),
        "max_node_mem_mb": max((n.mem_total_mb for n in available), default=None),
        "max_node_gpus": max((n.gpus_total for n in available), default=None),
    }
