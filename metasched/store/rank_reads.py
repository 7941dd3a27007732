"""Rank's reads: destination summaries, per-tool queue/run medians and typical run times.

Raw SQL and driver rows: rank reads up to thousands of destinations per call, within TPV's timeout,
and peewee's per-value query building and field conversion cost several times the queries.
"""

from __future__ import annotations

import statistics
from array import array
from collections import defaultdict
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from metasched.domain.destination import DestinationSummary, ToolTimes
from metasched.store.convert import aware_from_db
from metasched.store.database import Database
from metasched.store.galaxy import tool_key
from metasched.store.history import ALL_TOOLS
from metasched.store.samples import SAMPLES, unpack
from metasched.store.start_estimates import decode

# Summary columns of Destination, in DestinationSummary order after the identity/status fields.
SUMMARY_FIELDS = (
    "cores_total",
    "cores_free",
    "mem_total_mb",
    "mem_free_mb",
    "gpus_total",
    "gpus_free",
    "nodes_total",
    "nodes_unavailable",
    "jobs_running",
    "jobs_queued",
    "jobs_held",
    "queued_cores",
    "running_cores",
)
# Largest available node, in DestinationSummary order (nullable: None when no node is available).
_NODE_MAX_FIELDS = ("max_node_cores", "max_node_mem_mb", "max_node_gpus")
_SUMMARY_COLUMNS = (
    "id",
    "scheduler",
    "host",
    "reachable",
    "last_attempt",
    "last_success",
    "last_error",
    *SUMMARY_FIELDS,
    "disabled_reason",
    "disabled_until",
    *_NODE_MAX_FIELDS,
    "start_estimates",
)
_SUMMARY_SELECT = 'SELECT {} FROM "destination"'.format(", ".join(f'"{c}"' for c in _SUMMARY_COLUMNS))
_DISABLED_UNTIL = _SUMMARY_COLUMNS.index("disabled_until")


def summaries(db: Database, ids: Sequence[str] | None = None) -> list[DestinationSummary]:
    """Every destination (by id), or those of ``ids`` in that order; unknown ids are skipped."""
    if ids is None:
        rows = db.fetch(f'{_SUMMARY_SELECT} ORDER BY "id"', [])
    else:
        wanted = list(dict.fromkeys(ids))
        where, params = db.in_ids('"id"', wanted)
        found = {row[0]: row for row in db.fetch(f"{_SUMMARY_SELECT} WHERE {where}", params)}
        rows = [found[i] for i in wanted if i in found]
    return [_summary(row) for row in rows]


def _summary(row: tuple[Any, ...]) -> DestinationSummary:
    """A _SUMMARY_SELECT row -> DestinationSummary, positionally (rank converts a thousand per call).

    The count columns are NOT NULL integers already; only booleans and dates need converting.
    """
    values: list[Any] = list(row)
    values[3] = bool(values[3])
    values[4] = aware_from_db(values[4])
    values[5] = aware_from_db(values[5])
    values[_DISABLED_UNTIL] = aware_from_db(values[_DISABLED_UNTIL])
    values[-1] = decode(values[-1])  # start_estimates
    return DestinationSummary(*values)


def tool_times(
    db: Database, tool_id: str, dest_ids: Sequence[str], limit: int = SAMPLES
) -> dict[str, ToolTimes]:
    """Median queue/run time of the last ``limit`` finished jobs of this tool, per destination.

    Every requested id is in the result (count 0 when there is no history). The tool matches
    ``tool_key`` ``k`` or ``k_*`` (see ``metasched.store.galaxy``): an equality or a byte-order
    range (``k_`` <= tool_key < ``k` ``, backquote following underscore). Up to ``SAMPLES``, the
    samples each snapshot write keeps per (destination, tool_key) answer it: one row per destination
    and key instead of one per job (most of rank's read at a thousand destinations); the medians
    are over the newest ``limit`` jobs of all matching keys together, as from the history itself.
    """
    wanted = list(dict.fromkeys(dest_ids))
    key = tool_key(tool_id)
    if not key or not wanted or limit <= 0:
        return dict.fromkeys(wanted, ToolTimes(0, None, None))
    if limit > SAMPLES:
        return tool_times_from_history(db, key, wanted, limit)
    p = db.param
    column = db.bytewise('"tool_key"')
    sql = (
        'SELECT "destination_id", "samples" FROM "tool_history" '
        f'WHERE ("tool_key" = {p} OR ({column} >= {p} AND {column} < {p}))'
    )
    params: list[Any] = [key, key + "_", key + "`"]
    if 2 * len(wanted) < _destination_count(db):
        where, ids = db.in_ids('"destination_id"', wanted)
        sql += f" AND {where}"
        params += ids
    wanted_set = set(wanted)
    blobs: defaultdict[str, list[bytes | memoryview]] = defaultdict(list)
    for dest, blob in db.fetch(sql, params):
        if dest in wanted_set:
            blobs[dest].append(blob)
    out: dict[str, ToolTimes] = {}
    for dest in wanted:
        found = blobs.get(dest)
        if not found:
            out[dest] = ToolTimes(0, None, None)
            continue
        values = unpack(found[0])
        if len(found) > 1:  # several users' keys: merge, newest (end, id) first, as the history orders
            records = sorted(
                (tuple(v[i : i + 4]) for v in [values, *map(unpack, found[1:])] for i in range(0, len(v), 4)),
                reverse=True,
            )
            values = array("d", [x for record in records for x in record])
        n = min(len(values) // 4, limit)
        queues = [x for x in values[2 : 4 * n : 4] if x == x]  # NaN: unknown
        runs = [x for x in values[3 : 4 * n : 4] if x == x]
        out[dest] = ToolTimes(
            count=n,
            median_queue_s=statistics.median(queues) if queues else None,
            median_run_s=statistics.median(runs) if runs else None,
        )
    return out


def typical_run_s(db: Database, dest_ids: Sequence[str]) -> dict[str, float]:
    """Median run time of the newest finished jobs (any tool, Galaxy or not) per destination:
    how fast the work queued there drains. Destinations without such history are left out.
    One indexed query over one samples row per destination."""
    wanted = list(dict.fromkeys(dest_ids))
    if not wanted:
        return {}
    p = db.param
    sql = f'SELECT "destination_id", "samples" FROM "tool_history" WHERE "tool_key" = {p}'
    params: list[Any] = [ALL_TOOLS]
    if 2 * len(wanted) < _destination_count(db):
        where, ids = db.in_ids('"destination_id"', wanted)
        sql += f" AND {where}"
        params += ids
    wanted_set = set(wanted)
    out: dict[str, float] = {}
    for dest, blob in db.fetch(sql, params):
        if dest in wanted_set:
            runs = [x for x in unpack(blob)[3::4] if x == x]  # NaN: unknown
            if runs:
                out[dest] = statistics.median(runs)
    return out


def _destination_count(db: Database) -> int:
    count: int = db.fetch('SELECT COUNT(*) FROM "destination"', [])[0][0]
    return count


def tool_times_from_history(db: Database, key: str, wanted: list[str], limit: int) -> dict[str, ToolTimes]:
    """tool_times from finished_job itself, for limits beyond the kept samples. The tool's rows come
    from the covering (tool_key, destination_id, end_time, queue_s, run_s) index by an equality
    or a byte-order range (``k_`` <= tool_key < ``k` ``, backquote following underscore), in one
    query with no ordering: ranking every row by end time in the database costs more than the
    whole read. Only destinations with more than ``limit`` such rows are read again, newest
    ``limit`` first.
    """
    found: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
    p = db.param
    column = db.bytewise('"tool_key"')
    matches = f'("tool_key" = {p} OR ({column} >= {p} AND {column} < {p}))'
    keys = [key, key + "_", key + "`"]
    # SQLite's planner (no statistics) would rather walk the (destination_id, end_time) index,
    # i.e. every history row of those destinations; a unary + takes that index out of the race.
    dest_column = '"destination_id"' if db.is_postgres else '+"destination_id"'
    columns = '"destination_id", "queue_s", "run_s"'
    sql = f'SELECT {columns} FROM "finished_job" WHERE {matches}'
    params: list[Any] = []
    # TPV asks about the destinations it is configured with, i.e. usually most of the store:
    # then testing every row against the id list in SQL costs more than dropping the few
    # rows of other destinations here.
    if 2 * len(wanted) < _destination_count(db):
        where, params = db.in_ids(dest_column, wanted)
        sql += f" AND {where}"
    wanted_set = set(wanted)
    # A destination's rows mostly arrive together (index order): append them by runs. Any
    # order gives the same result; this only saves per-row work.
    for dest, run in groupby(db.fetch(sql, [*keys, *params]), key=itemgetter(0)):
        if dest in wanted_set:
            found[dest].extend(run)
    many = [dest for dest, rows in found.items() if len(rows) > limit]
    if many:
        where, params = db.in_ids(dest_column, many)
        recent = (
            f"SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY "
            '"destination_id" ORDER BY "end_time" DESC, "id" DESC) AS "rn" FROM "finished_job" '
            f"WHERE {matches} AND {where}"
        )
        sql = f'SELECT {columns} FROM ({recent}) AS "recent" WHERE "rn" <= {p}'
        for dest in many:
            found[dest] = []
        for row in db.fetch(sql, [*keys, *params, limit]):
            found[row[0]].append(row)
    out: dict[str, ToolTimes] = {}
    for dest in wanted:
        rows = found.get(dest)
        if not rows:
            out[dest] = ToolTimes(0, None, None)
            continue
        # REAL / double precision columns: the drivers return floats (or None) already.
        queues = [r[1] for r in rows if r[1] is not None]
        runs = [r[2] for r in rows if r[2] is not None]
        out[dest] = ToolTimes(
            count=len(rows),
            median_queue_s=statistics.median(queues) if queues else None,
            median_run_s=statistics.median(runs) if runs else None,
        )
    return out
