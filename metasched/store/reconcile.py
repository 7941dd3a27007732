"""Collect's side of the placement ledger: settle what rank recorded, and measure how right it was.

After every collect (``reconcile``, called once the destinations' snapshots are stored):

- an in-flight entry whose Galaxy job id appears in any destination's jobs (``g<id>_...`` names, as
  history parses them) is **resolved**, with ``actual_destination`` where the job really is: TPV may
  have fallen through to a later candidate than the one rank put first;
- once the job's finished-history row appears (the collect that first missed it), the entry keeps the
  actual queue wait and run time from that row (``None`` where history could not know them, e.g. a job
  never seen running);
- an entry never seen for ``rank.ledger_ttl`` seconds is **expired** (Pulsar staging, a job Galaxy
  never submitted, one that started and ended between two collects);
- resolved and expired entries placed more than ``collect.history_days`` ago are pruned, like history.

Cost per collect, however many jobs the destinations hold: one indexed read of the in-flight entries
(nothing more when there are none), one pass over the stored jobs joined to the ledger by its primary
key, one read of the history rows finished since the last reconciliation (the (destination_id,
end_time) index) joined the same way; all before one short write transaction of primary-key updates
and two indexed statements, so rank's 100 ms ledger writes are not kept waiting.

``calibration`` is the record a site admin reads (``status``, ``/v1/status``, ``/metrics``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from metasched.store.convert import naive_from_db
from metasched.store.inflight import INFLIGHT
from metasched.store.kv import put_setting
from metasched.store.placements import EXPIRED, RESOLVED
from metasched.store.store import Store

CALIBRATION_JOBS = 50  # newest finished resolved jobs per destination behind the prediction error
MIN_SECONDS = 1.0  # predictions and outcomes are clamped to at least this before the log ratio
WATERMARK_KEY = "ledger_finished_through"  # end time up to which finished history has been matched
WATERMARK_SLACK_S = 60.0  # re-read this much before the watermark (matching is idempotent)
SUBMIT_SKEW_S = 300.0  # a job submitted this long before its placement can still be the placed one
FIRST_LOOKBACK = timedelta(days=1)  # how far back the very first reconciliation reads history
_DESTINATION_CHUNK = 100  # per-destination subqueries per calibration statement
_MIN = datetime.min

# The stored jobs joined to the ledger by its primary key: CROSS JOIN makes SQLite scan job once
# (it has no index on galaxy_job_id, and one would cost every 100k-row snapshot replace) and probe
# placement for each Galaxy job; PostgreSQL plans it as an ordinary join (a hash join here).
_SEEN = (
    'SELECT p."job_id", p."placed_at", p."destination", j."destination_id", j."submit_time" '
    'FROM "job" AS j CROSS JOIN "placement" AS p '
    'WHERE j."galaxy_job_id" IS NOT NULL AND p."job_id" = CAST(j."galaxy_job_id" AS TEXT) '
    "AND p.\"state\" = 'inflight'"
)
# History rows finished since the watermark (index on (destination_id, end_time)) matched the same way.
_FINISHED = (
    'SELECT p."job_id", p."placed_at", p."state", p."actual_destination", f."destination_id", '
    'f."queue_s", f."run_s", f."end_time", f."submit_time" '
    'FROM "finished_job" AS f CROSS JOIN "placement" AS p '
    'WHERE {dest} AND f."end_time" >= {p} AND f."galaxy_job_id" IS NOT NULL '
    'AND p."job_id" = CAST(f."galaxy_job_id" AS TEXT) '
    "AND p.\"state\" IN ('inflight', 'resolved') AND p.\"finished_at\" IS NULL "
    'AND f."end_time" >= p."placed_at" '
    'ORDER BY f."end_time", f."id"'
)
# Updates name the entry by job id and placed_at: a rank that replaced it meanwhile wins.
_RESOLVE = (
    'UPDATE "placement" SET "state" = \'resolved\', "resolved_at" = {p}, "actual_destination" = {p} '
    'WHERE "job_id" = {p} AND "placed_at" = {p} AND "state" = \'inflight\''
)
_FINISH = (
    'UPDATE "placement" SET "state" = \'resolved\', "resolved_at" = COALESCE("resolved_at", {p}), '
    '"actual_destination" = {p}, "actual_queue_s" = {p}, "actual_run_s" = {p}, "finished_at" = {p} '
    'WHERE "job_id" = {p} AND "placed_at" = {p} AND "state" IN (\'inflight\', \'resolved\') '
    'AND "finished_at" IS NULL'
)
_EXPIRE = 'UPDATE "placement" SET "state" = \'expired\' WHERE "state" = \'inflight\' AND "placed_at" < {p}'
_PRUNE = 'DELETE FROM "placement" WHERE "state" IN (\'resolved\', \'expired\') AND "placed_at" < {p}'
_COUNTS = (
    'SELECT "state", "destination", COUNT(*), SUM("cores") FROM "placement" '
    'WHERE "state" IN (\'inflight\', \'expired\') GROUP BY "state", "destination"'
)
# One destination's newest finished outcomes of placements made for it (the prediction was about it).
_OUTCOMES = (
    'SELECT * FROM (SELECT "actual_destination", "pred_queue_s", "actual_queue_s", "pred_run_s", '
    '"actual_run_s" FROM "placement" WHERE "actual_destination" = {p} AND "finished_at" IS NOT NULL '
    'AND "destination" = "actual_destination" '
    'AND ("actual_queue_s" IS NOT NULL OR "actual_run_s" IS NOT NULL) '
    'ORDER BY "finished_at" DESC LIMIT {limit}) AS "d{n}"'
)


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What one reconciliation changed (the collect log and ``collect --json`` show it)."""

    resolved: int  # entries whose job showed up at a destination
    elsewhere: int  # of those, at another destination than the one rank put first
    finished: int  # entries that got their job's outcome (queue wait, run time)
    expired: int  # entries never seen within rank.ledger_ttl
    pruned: int  # resolved/expired entries older than collect.history_days, deleted


@dataclass(frozen=True, slots=True)
class Calibration:
    """A destination's ledger figures. Errors are median |ln(predicted / actual)| (0: exact, 0.69: off
    by a factor of 2), both clamped to MIN_SECONDS, over the newest ``jobs`` finished placements made
    for this destination that ran here; None without such a job."""

    inflight: int  # placements not seen in any destination's jobs yet
    inflight_cores: float
    expired: int  # expired placements still in the ledger (kept collect.history_days)
    jobs: int
    queue_error: float | None
    run_error: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "inflight": self.inflight,
            "inflight_cores": self.inflight_cores,
            "expired": self.expired,
            "jobs": self.jobs,
            "queue_error": None if self.queue_error is None else round(self.queue_error, 3),
            "run_error": None if self.run_error is None else round(self.run_error, 3),
        }


EMPTY = Calibration(0, 0.0, 0, 0, None, None)


def reconcile(store: Store, now: datetime, *, ttl_s: float, history_days: int) -> ReconcileResult:
    """Resolve, complete, expire and prune ledger entries as of ``now`` (aware UTC); see the module doc.

    Raises the database's error when the store cannot be read or written; nothing is then changed
    (the caller logs it and the snapshots already stored stay).
    """
    p = store.db.param
    seen = _seen(store)
    outcomes = _outcomes(store, now, history_days, seen)
    stamp = store.db.dt_in(now)
    resolved = elsewhere = finished = 0
    with store.db.write_tx():
        cursor = store.db.cursor()
        for job_id, (placed, dest, ranked) in seen.items():
            cursor.execute(_RESOLVE.format(p=p), (stamp, dest, job_id, placed))
            if cursor.rowcount > 0:
                resolved += 1
                elsewhere += dest != ranked
        for job_id, (placed, dest, queue_s, run_s, end, state) in outcomes.items():
            cursor.execute(_FINISH.format(p=p), (stamp, dest, queue_s, run_s, end, job_id, placed))
            if cursor.rowcount > 0:
                finished += 1
                if state == INFLIGHT and job_id not in seen:  # ended between two collects' views of it
                    resolved += 1
        cursor.execute(_EXPIRE.format(p=p), (store.db.dt_in(now - timedelta(seconds=ttl_s)),))
        expired = max(0, cursor.rowcount)
        cursor.execute(_PRUNE.format(p=p), (store.db.dt_in(now - timedelta(days=history_days)),))
        pruned = max(0, cursor.rowcount)
        put_setting(store.db, WATERMARK_KEY, now.isoformat())
    return ReconcileResult(resolved, elsewhere, finished, expired, pruned)


def _seen(store: Store) -> dict[str, tuple[Any, str, str]]:
    """In-flight entries whose job is in a destination's stored jobs: job id -> (placed_at as stored,
    destination it is at, destination rank put first). Nothing is read past one indexed probe when
    no entry is in flight."""
    if not store.db.fetch('SELECT 1 FROM "placement" WHERE "state" = \'inflight\' LIMIT 1', []):
        return {}
    found: dict[str, list[tuple[Any, str, str, Any]]] = {}
    for job_id, placed, ranked, dest, submit in store.db.fetch(_SEEN, []):
        if _submitted_after(submit, placed):
            found.setdefault(job_id, []).append((placed, ranked, dest, submit))
    out: dict[str, tuple[Any, str, str]] = {}
    for job_id, copies in found.items():
        placed, ranked = copies[0][0], copies[0][1]
        # Normally at one destination; a stale copy elsewhere loses to the ranked one, else the newest.
        at = [c for c in copies if c[2] == ranked] or sorted(
            copies, key=lambda c: naive_from_db(c[3]) or _MIN
        )
        out[job_id] = (placed, at[-1][2], ranked)
    return out


def _submitted_after(submit: Any, placed: Any) -> bool:
    """Whether a job (submit time as stored) can be the one placed then: Galaxy submits after rank
    answered, so a job submitted well before is an earlier run of a resubmitted job. Unknown submit
    times match; SUBMIT_SKEW_S allows for the cluster's clock."""
    submitted, at = naive_from_db(submit), naive_from_db(placed)
    return submitted is None or at is None or submitted >= at - timedelta(seconds=SUBMIT_SKEW_S)


def _outcomes(
    store: Store, now: datetime, history_days: int, seen: dict[str, tuple[Any, str, str]]
) -> dict[str, tuple[Any, ...]]:
    """Entries (in flight or resolved, without an outcome yet) whose job's history row was written
    since the watermark: job id -> (placed_at as stored, destination, queue_s, run_s, end_time as
    stored, state). ``seen``: what ``_seen`` found this time (a job there is not the one that ended)."""
    raw = store.get_setting(WATERMARK_KEY)
    since = (
        datetime.fromisoformat(raw) - timedelta(seconds=WATERMARK_SLACK_S) if raw else now - FIRST_LOOKBACK
    )
    since = max(since, now - timedelta(days=history_days))
    dest_ids = [row[0] for row in store.db.fetch('SELECT "id" FROM "destination"', [])]
    if not dest_ids:
        return {}
    where, params = store.db.in_ids('f."destination_id"', dest_ids)
    rows = store.db.fetch(_FINISHED.format(dest=where, p=store.db.param), [*params, store.db.dt_in(since)])
    out: dict[str, tuple[Any, ...]] = {}
    for job_id, placed, state, actual, dest, queue_s, run_s, end, submit in rows:
        if state == RESOLVED and actual != dest:
            continue  # an earlier run of a resubmitted job, ended where the new one is not
        if state == INFLIGHT and (job_id in seen or not _submitted_after(submit, placed)):
            continue  # the same: the placed job is still queued somewhere, or not submitted yet
        out[job_id] = (placed, dest, queue_s, run_s, end, state)
    return out


def log_error(predicted: float, actual: float) -> float:
    """|ln(predicted / actual)| with both clamped to MIN_SECONDS: a 0 s queue wait predicted as 0.4 s
    is exact, not infinitely wrong, and sub-second differences do not count."""
    return abs(math.log(max(predicted, MIN_SECONDS) / max(actual, MIN_SECONDS)))


def calibration(
    store: Store, dest_ids: Sequence[str], limit: int = CALIBRATION_JOBS
) -> dict[str, Calibration]:
    """Every id of ``dest_ids`` -> its Calibration: one grouped query on the (state, placed_at) index,
    and the newest ``limit`` outcomes per destination from the (actual_destination, finished_at) index
    (one statement per _DESTINATION_CHUNK destinations)."""
    wanted = list(dict.fromkeys(dest_ids))
    counts: dict[tuple[str, str], tuple[int, float]] = {}
    for state, dest, n, cores in store.db.fetch(_COUNTS, []):
        counts[(state, dest)] = (int(n), float(cores or 0.0))
    pairs: dict[str, list[tuple[float, Any, float, Any]]] = {}
    if limit > 0:
        p = store.db.param
        for i in range(0, len(wanted), _DESTINATION_CHUNK):
            chunk = wanted[i : i + _DESTINATION_CHUNK]
            sql = " UNION ALL ".join(_OUTCOMES.format(p=p, limit=int(limit), n=n) for n in range(len(chunk)))
            for dest, pq, aq, pr, ar in store.db.fetch(sql, chunk):
                pairs.setdefault(dest, []).append((pq, aq, pr, ar))
    out: dict[str, Calibration] = {}
    for dest in wanted:
        inflight, cores = counts.get((INFLIGHT, dest), (0, 0.0))
        expired = counts.get((EXPIRED, dest), (0, 0.0))[0]
        rows = pairs.get(dest, [])
        queue = [log_error(pq, aq) for pq, aq, _, _ in rows if aq is not None and pq is not None]
        run = [log_error(pr, ar) for _, _, pr, ar in rows if ar is not None and pr is not None]
        out[dest] = Calibration(
            inflight=inflight,
            inflight_cores=cores,
            expired=expired,
            jobs=len(rows),
            queue_error=statistics.median(queue) if queue else None,
            run_error=statistics.median(run) if run else None,
        )
    return out
