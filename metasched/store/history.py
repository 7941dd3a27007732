"""Finished-job history, written with each snapshot: jobs that vanished since the previous snapshot,
and the packed per-tool samples (``tool_history``) rank reads instead of the history itself."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import Any

from metasched.domain.jobs import OTHER, PENDING, RUNNING
from metasched.store import models
from metasched.store.convert import naive_from_db
from metasched.store.database import Database
from metasched.store.samples import SAMPLES, end_seconds, pack

ALL_TOOLS = ""  # tool_history key of a destination's samples over every tool (no Galaxy tool has it)
ALL_TOOLS_SAMPLES = 50  # newest jobs behind a destination's typical run time: cheap for rank to read
_EPOCH = datetime(1970, 1, 1)

# What history needs of a previous job; read with one raw query (the hot part of a big write).
TRACKED_COLUMNS = (
    "job_id",
    "state",
    "partition",
    "name",
    "user",
    "cores",
    "mem_mb",
    "submit_time",
    "start_time",
    "galaxy_job_id",
    "tool_key",
)
FINISHED_COLUMNS = (
    "destination_id",
    "job_id",
    "partition",
    "name",
    "user",
    "galaxy_job_id",
    "tool_key",
    "cores",
    "mem_mb",
    "submit_time",
    "start_time",
    "end_time",
    "queue_s",
    "run_s",
)
_TOOL_KEY = FINISHED_COLUMNS.index("tool_key")
_UPSERT_SAMPLES = (
    'INSERT INTO "tool_history" ("destination_id", "tool_key", "oldest_end", "samples") '
    'VALUES ({p}, {p}, {p}, {p}) ON CONFLICT ("tool_key", "destination_id") DO UPDATE SET '
    '"oldest_end" = excluded."oldest_end", "samples" = excluded."samples"'
)


def record_vanished(
    db: Database, dest_id: str, current_ids: set[str], finished: datetime, gap_ok: bool
) -> list[tuple[Any, ...]]:
    """Insert a history row for every job tracked in the stored snapshot that ``current_ids`` lacks;
    returns those rows. Runs inside the snapshot's write transaction, before the old jobs go."""
    J = models.Job
    tracked = db.fetch_query(
        J.select(*[getattr(J, c) for c in TRACKED_COLUMNS]).where(
            (J.destination == dest_id) & J.state.in_([PENDING, RUNNING, OTHER])
        )
    )
    end_db = db.dt_in(finished)
    rows = [
        row
        for prev in tracked
        if prev[0] not in current_ids
        and (row := _history_row(db, dest_id, prev, finished, end_db, gap_ok)) is not None
    ]
    db.insert_many(models.FinishedJob, FINISHED_COLUMNS, rows, ignore=True)
    return rows


def _history_row(
    db: Database, dest_id: str, prev: tuple[Any, ...], end: datetime, end_db: Any, gap_ok: bool
) -> tuple[Any, ...] | None:
    """A FinishedJob tuple for a vanished job (``prev`` in TRACKED_COLUMNS order), or None.
    ``end``: naive UTC."""
    job_id, state, partition, name, user, cores, mem_mb, submit_raw, start_raw, gid, key = prev
    submit = naive_from_db(submit_raw)
    start = naive_from_db(start_raw)
    if state == PENDING:
        start = None  # a pending job's start is at most the scheduler's estimate
    elif start is None:
        return None  # "other" without a start time (e.g. suspended before start): nothing to learn
    queue_s = max(0.0, (start - submit).total_seconds()) if start and submit else None
    run_s = max(0.0, (end - start).total_seconds()) if start and gap_ok else None
    return (
        dest_id,
        job_id,
        partition,
        name,
        user,
        gid,
        key,
        cores,
        mem_mb,
        db.dt_in(submit),
        db.dt_in(start),
        end_db,
        queue_s,
        run_s,
    )


def refresh_samples(db: Database, dest_id: str, new_rows: list[tuple[Any, ...]], cutoff: datetime) -> None:
    """After new history (``new_rows``) and pruning at ``cutoff``: rebuild the samples rows they touch."""
    _refresh_tool_history(db, dest_id, {row[_TOOL_KEY] for row in new_rows if row[_TOOL_KEY]}, cutoff)
    _refresh_all_tools(db, dest_id, bool(new_rows), cutoff)


def prune(db: Database, dest_id: str, cutoff: datetime) -> None:
    """History and collect runs of this destination older than ``cutoff`` go."""
    F, R = models.FinishedJob, models.CollectRun
    db.bind(F.delete().where((F.destination_id == dest_id) & (F.end_time < cutoff))).execute()
    db.bind(R.delete().where((R.destination_id == dest_id) & (R.started < cutoff))).execute()


def _refresh_tool_history(db: Database, dest_id: str, keys: set[str], cutoff: datetime) -> None:
    """Rebuild the tool_history rows of ``keys`` (new history) and of samples older than ``cutoff``
    (pruned), from finished_job itself: duplicates it ignored and pruning cannot leave them stale."""
    p = db.param
    pruned = db.fetch(
        f'SELECT "tool_key" FROM "tool_history" WHERE "destination_id" = {p} AND "oldest_end" < {p} '
        f'AND "tool_key" <> {p}',
        [dest_id, db.dt_in(cutoff), ALL_TOOLS],
    )
    keys.update(row[0] for row in pruned)
    if not keys:
        return
    # One query for every key, however many users' keys finished since the last collect.
    where, params = db.in_ids('"tool_key"', sorted(keys))
    ranked = (
        'SELECT "tool_key", "end_time", "id", "queue_s", "run_s", ROW_NUMBER() OVER (PARTITION BY '
        '"tool_key" ORDER BY "end_time" DESC, "id" DESC) AS "rn" FROM "finished_job" '
        f'WHERE "destination_id" = {p} AND {where}'
    )
    rows = db.fetch(
        f'SELECT "tool_key", "end_time", "id", "queue_s", "run_s" FROM ({ranked}) AS "newest" '
        f'WHERE "rn" <= {SAMPLES} ORDER BY "tool_key", "rn"',
        [dest_id, *params],
    )
    upserts = []
    for key, group in groupby(rows, key=itemgetter(0)):
        samples = [row[1:] for row in group]
        oldest, blob = _packed(samples)
        upserts.append((dest_id, key, db.dt_in(oldest), blob))
        keys.discard(key)
    cursor = db.cursor()
    if upserts:
        cursor.executemany(_UPSERT_SAMPLES.format(p=p), upserts)
    if keys:  # every sample pruned
        cursor.executemany(
            f'DELETE FROM "tool_history" WHERE "destination_id" = {p} AND "tool_key" = {p}',
            [(dest_id, key) for key in sorted(keys)],
        )


def _refresh_all_tools(db: Database, dest_id: str, new_history: bool, cutoff: datetime) -> None:
    """Rebuild the destination-wide samples row (tool_key ``ALL_TOOLS``: every finished job,
    Galaxy or not) when history was added or its oldest sample pruned: rank's typical job there."""
    p = db.param
    if not new_history and not db.fetch(
        f'SELECT 1 FROM "tool_history" WHERE "destination_id" = {p} AND "tool_key" = {p} '
        f'AND "oldest_end" < {p}',
        [dest_id, ALL_TOOLS, db.dt_in(cutoff)],
    ):
        return
    rows = db.fetch(
        'SELECT "end_time", "id", "queue_s", "run_s" FROM "finished_job" '
        f'WHERE "destination_id" = {p} ORDER BY "end_time" DESC, "id" DESC LIMIT {ALL_TOOLS_SAMPLES}',
        [dest_id],
    )
    cursor = db.cursor()
    if not rows:
        cursor.execute(
            f'DELETE FROM "tool_history" WHERE "destination_id" = {p} AND "tool_key" = {p}',
            (dest_id, ALL_TOOLS),
        )
        return
    oldest, blob = _packed(rows)
    cursor.execute(_UPSERT_SAMPLES.format(p=p), (dest_id, ALL_TOOLS, db.dt_in(oldest), blob))


def _packed(rows: Iterable[tuple[Any, ...]]) -> tuple[datetime, bytes]:
    """(end_time, id, queue_s, run_s) rows, newest first -> (oldest end, samples blob)."""
    listed = list(rows)
    ends = [naive_from_db(r[0]) or _EPOCH for r in listed]
    blob = pack((end_seconds(e), float(r[1]), r[2], r[3]) for e, r in zip(ends, listed, strict=True))
    return ends[-1], blob
