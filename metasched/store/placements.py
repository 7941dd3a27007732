"""The placement ledger (schema v5): where rank sent each Galaxy job, and what it predicted.

Rank reads the in-flight entries (``metasched.store.inflight``) to count demand the collected state
cannot contain yet, and records its answer with one short write transaction of its own: TPV waits for
rank, so each attempt gives up after ``busy_timeout_s`` (SQLite busy timeout, PostgreSQL lock and
statement timeout), a lock held by another writer gets ``WRITE_ATTEMPTS`` attempts in all, and then
the caller answers anyway, with a warning. Collect resolves and expires entries
(``metasched.store.reconcile``).

The functions use the Store's own connection, also when it was opened read-only for rank: the write
lifts SQLite's ``query_only`` (or starts a ``READ WRITE`` transaction on PostgreSQL) for itself only.
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from typing import Any

from metasched.domain.destination import PlacementEntry
from metasched.domain.errors import MetaschedError
from metasched.store.inflight import COLUMNS
from metasched.store.store import Store

RESOLVED = "resolved"
EXPIRED = "expired"
MAX_JOB_ID_CHARS = 255  # the column's width on PostgreSQL (VARCHAR(255))
WRITE_TIMEOUT_S = 0.1  # per attempt: TPV gives rank 2 s; a locked store must not take them
# Ten ranks at once queue on SQLite's one writer, and a busy machine can deschedule the holder past
# one attempt's wait: a second and third attempt save those entries; a store locked for good costs
# WRITE_ATTEMPTS x WRITE_TIMEOUT_S.
WRITE_ATTEMPTS = 3
_SQLITE_BUSY = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes of the extended ones)
# lock_not_available (lock_timeout), query_canceled (statement_timeout), serialization, deadlock
_PG_CONTENDED = frozenset({"55P03", "57014", "40001", "40P01"})

# Ranking a job id again replaces its entry: a resubmitted job is a new placement, its old outcome goes.
_UPSERT = (
    'INSERT INTO "placement" ({cols}, "state", "resolved_at", "actual_destination", "actual_queue_s", '
    '"actual_run_s", "finished_at") VALUES ({params}, \'inflight\', NULL, NULL, NULL, NULL, NULL) '
    'ON CONFLICT ("job_id") DO UPDATE SET {updates}, "state" = \'inflight\', "resolved_at" = NULL, '
    '"actual_destination" = NULL, "actual_queue_s" = NULL, "actual_run_s" = NULL, "finished_at" = NULL'
)


class LedgerError(MetaschedError):
    """A placement could not be recorded (locked, read-only or broken store); rank answers anyway."""


class _Busy(LedgerError):
    """This process's own writer holds the store: worth another attempt."""


def _sql(template: str, param: str, **extra: str) -> str:
    return template.format(
        cols=", ".join(f'"{c}"' for c in COLUMNS),
        params=", ".join(param for _ in COLUMNS),
        updates=", ".join(f'"{c}" = excluded."{c}"' for c in COLUMNS[1:]),
        param=param,
        **extra,
    )


def record_placement(
    store: Store,
    entry: PlacementEntry,
    busy_timeout_s: float = WRITE_TIMEOUT_S,
    attempts: int = WRITE_ATTEMPTS,
) -> None:
    """Insert or replace ``entry`` in one write transaction that waits at most ``busy_timeout_s`` for
    locks; when another writer held them, up to ``attempts`` transactions in all.

    Raises LedgerError (one line) when the store cannot be written; nothing is left half-done.
    """
    if len(entry.job_id) > MAX_JOB_ID_CHARS:
        raise LedgerError(f"job id longer than {MAX_JOB_ID_CHARS} characters")
    values: list[Any] = [getattr(entry, c) for c in COLUMNS]
    values[6] = store.db.dt_in(entry.placed_at)
    for attempt in range(1, max(1, attempts) + 1):
        try:
            if store.is_postgres:
                _write_postgres(store, values, busy_timeout_s)
            else:
                _write_sqlite(store, values, busy_timeout_s)
            return
        except _Busy:
            if attempt >= attempts:
                raise
        except store.db.errors as exc:
            if attempt >= attempts or not _contended(exc):
                raise LedgerError(" ".join(str(exc).split()) or type(exc).__name__) from exc


def _contended(exc: BaseException) -> bool:
    """A lock another writer held past the attempt's wait (try again), not a store that cannot be
    written (read-only, missing table, broken connection: give up at once)."""
    code = getattr(exc, "sqlstate", None)
    if code is not None:
        return code in _PG_CONTENDED
    if isinstance(exc, sqlite3.OperationalError):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY
    return False


def _write_sqlite(store: Store, values: list[Any], busy_timeout_s: float) -> None:
    # This process's other writers (serve's collect loop) queue on the Store's lock, not on SQLite's.
    lock: Any = store.db.write_lock
    if not lock.acquire(timeout=busy_timeout_s):
        raise _Busy("store busy: a collect in this process is writing")
    try:
        conn = store.db.connection()  # the raw sqlite3 connection: one statement per step, no peewee
        before = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {max(1, int(busy_timeout_s * 1000))}")
        # As collect's connections write (WAL, NORMAL): no fsync while holding the one writer lock,
        # which ten concurrent ranks otherwise queue on past their wait. A power cut may lose the last
        # entries; they would have expired anyway, and the answers were given.
        conn.execute("PRAGMA synchronous = NORMAL")
        if store.db.readonly:
            conn.execute("PRAGMA query_only = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_sql(_UPSERT, "?"), values)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if store.db.readonly:
                conn.execute("PRAGMA query_only = 1")
            conn.execute(f"PRAGMA busy_timeout = {int(before)}")
            conn.execute(f"PRAGMA synchronous = {int(sync)}")
    finally:
        lock.release()


def _write_postgres(store: Store, values: list[Any], busy_timeout_s: float) -> None:
    """One round trip: the transaction, its timeouts and the upsert in one simple query.

    ``READ WRITE`` overrides the read-only default of rank's connection for this transaction only;
    ``SET LOCAL`` timeouts end with it. The lock timeout fires a little before the statement timeout,
    so a writer holding the table is reported as ``lock timeout``, not as a slow statement.
    """
    ms = max(2, int(busy_timeout_s * 1000))
    sql = (
        f"BEGIN READ WRITE; SET LOCAL lock_timeout = {ms * 9 // 10}; SET LOCAL statement_timeout = {ms}; "
        f"{_sql(_UPSERT, '%s')}; COMMIT"
    )
    with store.db.client_cursor() as cur:
        try:
            cur.execute(sql, values)
        except BaseException:
            with suppress(Exception):  # a dead connection cannot roll back: the server already has
                cur.execute("ROLLBACK")
            raise
