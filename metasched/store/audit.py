"""Status and audit reads: a destination's stored nodes, partitions and jobs, finished-job history
and the collect-run records (what ``status`` and ``/v1/status`` show)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from metasched.domain.jobs import Job, JobState, Node, Partition
from metasched.store import models
from metasched.store.convert import aware_from_db
from metasched.store.database import Database
from metasched.store.history import FINISHED_COLUMNS
from metasched.store.snapshots import JOB_COLUMNS, NODE_COLUMNS, PARTITION_COLUMNS

_JOB_FIELDS = JOB_COLUMNS[1:-2]  # the domain Job's fields; the galaxy columns are derived
_JOB_DATES = ("submit_time", "start_time", "start_estimate", "estimated_at")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One destination's part of one collect run (the audit trail status shows)."""

    run_id: str
    destination_id: str
    started: datetime
    finished: datetime
    ok: bool
    error: str | None
    duration_s: float


@dataclass(frozen=True, slots=True)
class FinishedRecord:
    """One finished-job history row. ``end_time`` is the collect that first missed the job."""

    destination_id: str
    job_id: str
    partition: str
    name: str
    user: str
    galaxy_job_id: int | None
    tool_key: str | None
    cores: int
    mem_mb: int
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime
    queue_s: float | None
    run_s: float | None


def nodes(db: Database, dest_id: str) -> list[Node]:
    N = models.Node
    names = NODE_COLUMNS[1:]
    out = []
    for row in db.rows(
        N.select(*[getattr(N, c) for c in names]).where(N.destination == dest_id).order_by(N.id)
    ):
        values = dict(zip(names, row, strict=True))
        values["partitions"] = tuple(p for p in values["partitions"].split(",") if p)
        out.append(Node(**values))
    return out


def partitions(db: Database, dest_id: str) -> list[Partition]:
    P = models.Partition
    names = PARTITION_COLUMNS[1:]
    out = []
    for row in db.rows(
        P.select(*[getattr(P, c) for c in names]).where(P.destination == dest_id).order_by(P.id)
    ):
        values = dict(zip(names, row, strict=True))
        values["limits"] = {str(k): str(v) for k, v in json.loads(values["limits"] or "{}").items()}
        out.append(Partition(**values))
    return out


def jobs(db: Database, dest_id: str) -> list[Job]:
    """The destination's jobs as of its last good snapshot, in snapshot order (fast for 100k jobs)."""
    J = models.Job
    rows = db.fetch_query(
        J.select(*[getattr(J, c) for c in _JOB_FIELDS]).where(J.destination == dest_id).order_by(J.id)
    )
    out = []
    for row in rows:
        values = dict(zip(_JOB_FIELDS, row, strict=True))
        for name in _JOB_DATES:
            values[name] = aware_from_db(values[name])
        values["state"] = JobState(values["state"])
        out.append(Job(**values))
    return out


def history(db: Database, dest_id: str | None = None, limit: int = 100) -> list[FinishedRecord]:
    """Newest finished-job history rows first (all destinations, or one)."""
    F = models.FinishedJob
    query = (
        F.select(*[getattr(F, c) for c in FINISHED_COLUMNS])
        .order_by(F.end_time.desc(), F.id.desc())
        .limit(limit)
    )
    if dest_id is not None:
        query = query.where(F.destination_id == dest_id)
    out = []
    for row in db.rows(query):
        values = dict(zip(FINISHED_COLUMNS, row, strict=True))
        for name in ("submit_time", "start_time", "end_time"):
            values[name] = aware_from_db(values[name])
        out.append(FinishedRecord(**values))
    return out


def runs(db: Database, limit: int = 50, dest_id: str | None = None) -> list[RunRecord]:
    """Newest collect-run records first (all destinations, or one)."""
    R = models.CollectRun
    query = (
        R.select(R.run_id, R.destination_id, R.started, R.finished, R.ok, R.error, R.duration_s)
        .order_by(R.id.desc())
        .limit(limit)
    )
    if dest_id is not None:
        query = query.where(R.destination_id == dest_id)
    return [
        RunRecord(rid, dest, aware_from_db(st), aware_from_db(fin), bool(ok), err, float(dur))
        for rid, dest, st, fin, ok, err, dur in db.rows(query)
    ]
