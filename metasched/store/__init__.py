"""The state store: what collect writes and rank/status/serve read. See ``store.models`` for tables.

Callers use ``Store`` only; models stay an implementation detail of this package.

Threads: one ``Store`` may be shared by every thread of a process (collect's fan-out workers,
serve's request handlers). peewee keeps one connection per thread, and every query here is bound
to this Store's own database object, never to a global one: models are not bound at module level,
so several Stores (different files or servers) can be open in one process at once.

Concurrency between processes: SQLite runs in WAL mode, so rank and status read the last committed
state while collect writes; writers wait up to ``BUSY_TIMEOUT_S`` for each other. A snapshot write
is one short transaction per destination; everything that can be computed before it is.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import statistics
import threading
from array import array
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from peewee import (
    Database,
    Model,
    PeeweeException,
    PostgresqlDatabase,
    SchemaManager,
    SqliteDatabase,
)

from metasched.domain.destination import DestinationSummary, MetricRow, ToolTimes
from metasched.domain.errors import CollectError, ConfigError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Job, JobState, Node, Partition, Snapshot
from metasched.domain.start_estimates import reduce
from metasched.store import models
from metasched.store.galaxy import parse_galaxy_job_name, tool_key, versionless
from metasched.store.models import SCHEMA_VERSION
from metasched.store.samples import SAMPLES, end_seconds, pack, unpack
from metasched.store.start_estimates import decode, encode

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0  # how long a SQLite writer waits for another (collect of another destination)
HISTORY_DAYS = 90  # finished-job history and collect runs older than this are pruned
MAX_GAP_S = 3600.0  # see write_snapshot: run times across longer collect gaps are not trusted
_BATCH = 1000  # rows per multi-row INSERT on PostgreSQL
_VERSION_KEY = "schema_version"
_EPOCH = datetime(1970, 1, 1)
_UNSET: Any = object()  # "not parsed yet" in per-call date memos (None is a valid parsed value)
_DT_FIELD = models.Job.submit_time  # any DateTimeField: its python_value parses SQLite's text form

T = TypeVar("T")
ALL_TOOLS = ""  # tool_history key of a destination's samples over every tool (no Galaxy tool has it)
ALL_TOOLS_SAMPLES = 50  # newest jobs behind a destination's typical run time: cheap for rank to read


@dataclass(frozen=True, slots=True)
class WriteResult:
    jobs: int
    finished: int  # jobs recorded into finished-job history by this write


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


# Summary columns of Destination, in DestinationSummary order after the identity/status fields.
_SUMMARY_FIELDS = (
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
# What summaries() reads, in DestinationSummary field order (raw SQL: see summaries()).
_SUMMARY_SELECT = 'SELECT {} FROM "destination"'.format(
    ", ".join(
        f'"{c}"'
        for c in (
            "id",
            "scheduler",
            "host",
            "reachable",
            "last_attempt",
            "last_success",
            "last_error",
            *_SUMMARY_FIELDS,
            "disabled_reason",
            "disabled_until",
            *_NODE_MAX_FIELDS,
            "start_estimates",
        )
    )
)
_NODE_COLUMNS = (
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
_PARTITION_COLUMNS = (
    "destination",
    "name",
    "is_default",
    "state",
    "available",
    "nodes_total",
    "cores_total",
    "limits",
)
_JOB_COLUMNS = (
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
_JOB_FIELDS = _JOB_COLUMNS[1:-2]  # the collect.types.Job fields; the galaxy columns are derived
# What history needs of a previous job; read with one raw query (the hot part of a big write).
_TRACKED_COLUMNS = (
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
_FINISHED_COLUMNS = (
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
_METRIC_COLUMNS = (
    "source",
    "destination_id",
    "tool_id",
    "name",
    "value",
    "text",
    "observed_at",
    "fetched_at",
)


class StoreWriteError(CollectError):
    """A snapshot could not be stored (database error); its transaction rolled back, the old one stays.

    A CollectError, so collect records it as that destination's failure and goes on with the others.
    """


class Store:
    """Opens (creating or migrating) a SQLite file or PostgreSQL database and reads/writes state."""

    def __init__(self, db: Database, display_url: str) -> None:
        """Use ``Store.open``; this only wraps an unprepared database."""
        self._db = db
        self._url = display_url  # password removed: safe in error messages
        self._pg = isinstance(db, PostgresqlDatabase)
        self._sql: Any = db  # for the driver-level calls peewee leaves untyped (cursor, execute)
        self._readonly = False
        self._write_lock: AbstractContextManager[Any] = nullcontext() if self._pg else threading.RLock()
        # What a failed write raises: peewee's own errors and the raw driver's (bulk paths use its cursor).
        self._db_errors: tuple[type[Exception], ...] = (PeeweeException, sqlite3.Error)
        if self._pg:
            import importlib

            psycopg2: Any = importlib.import_module("psycopg2")  # untyped: no stubs installed
            self._db_errors += (psycopg2.Error,)

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, url: str, *, readonly: bool = False, busy_timeout: float | None = None, connect_timeout: int = 10
    ) -> Self:
        """``url``: a path, ``sqlite:///relative/path``, ``sqlite:////absolute/path`` or
        ``postgresql://user[:password]@host[:port]/db[?libpq options]``.

        Creates the schema on first use and migrates an older one. Raises ConfigError naming
        ``database`` when the URL is unusable, the database cannot be opened, or its schema is newer
        than this metasched.

        ``readonly`` (rank, which must answer within TPV's timeout): never create, migrate or write
        (a missing or older schema is a ConfigError), SQLite ``query_only``, PostgreSQL read-only
        transactions with a statement timeout of ``busy_timeout``. ``busy_timeout`` (seconds): how
        long to wait for a lock (default ``BUSY_TIMEOUT_S`` for SQLite, none for PostgreSQL);
        ``connect_timeout``: PostgreSQL connection timeout in seconds (libpq waits at least 2).
        """
        db, shown = _make_database(
            url, readonly=readonly, busy_timeout=busy_timeout, connect_timeout=connect_timeout
        )
        store = cls(db, shown)
        store._readonly = readonly
        try:
            store._prepare()
        except BaseException as exc:
            store.close()
            if isinstance(exc, (PeeweeException, sqlite3.Error, OSError)):
                raise ConfigError([f"database: cannot open {shown}: {_one_line(exc)}"]) from exc
            raise
        return store

    def close(self) -> None:
        """Close the calling thread's connection (other threads' close when those threads end)."""
        if not self._db.is_closed() and not self._db.in_transaction():
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return self._url

    @property
    def is_postgres(self) -> bool:
        return self._pg

    def schema_version(self) -> int:
        version = self._stored_version()
        return 0 if version is None else version

    def _prepare(self) -> None:
        version = self._stored_version()
        if version == SCHEMA_VERSION:  # the fast path rank takes on every call
            return
        self._refuse_newer(version)
        if self._readonly:
            found = "no metasched schema" if version is None else f"schema version {version}"
            raise ConfigError(
                [
                    f"database: {self._url} has {found}, not {SCHEMA_VERSION}, and is opened read-only "
                    "(metasched collect creates or migrates it)"
                ]
            )
        from metasched.store.migrations import (
            postgres_extras,
            upgrade,
        )  # playhouse.migrate: not on rank's path

        with self._write_tx():
            # Re-read inside the write lock: another process may have created or migrated meanwhile.
            version = self._stored_version()
            self._refuse_newer(version)
            if version == SCHEMA_VERSION:
                return
            if version is None:
                if self._db.table_exists(models.Destination._meta.table_name):
                    raise ConfigError(
                        [f"database: {self._url} has metasched-like tables but no schema version; refusing"]
                    )
                for model in models.MODELS:
                    SchemaManager(model, database=self._db).create_all(safe=True)
                postgres_extras(self._db)
                log.info("created store schema v%d in %s", SCHEMA_VERSION, self._url)
            else:
                upgrade(self._db, version)
                log.info("migrated store %s from schema v%d to v%d", self._url, version, SCHEMA_VERSION)
            self._put_setting(_VERSION_KEY, str(SCHEMA_VERSION))

    def _stored_version(self) -> int | None:
        if not self._db.table_exists(models.Setting._meta.table_name):
            return None
        raw = self.get_setting(_VERSION_KEY)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError([f"database: {self._url}: unreadable schema version {raw!r}"]) from None

    def _refuse_newer(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(
                [
                    f"database: {self._url} has schema version {version}, newer than this metasched "
                    f"understands ({SCHEMA_VERSION}); upgrade metasched"
                ]
            )

    # -- plumbing ---------------------------------------------------------------------------

    def _q(self, query: T) -> T:
        """Bind a query to this Store's database (models are never bound globally)."""
        handle: Any = query
        bound: T = handle.bind(self._db)
        return bound

    def _rows(self, query: Any) -> list[tuple[Any, ...]]:
        """A select's rows as tuples, values converted by their fields (datetimes, booleans)."""
        return [tuple(row) for row in query.bind(self._db).tuples()]

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a raw SELECT as the driver returns them (hot read paths: no peewee per value)."""
        rows: list[tuple[Any, ...]] = self._sql.execute_sql(sql, params).fetchall()
        return rows

    def _in_ids(self, column: str, ids: list[str]) -> tuple[str, list[Any]]:
        """``column`` is one of ``ids``, as SQL plus its parameters: one parameter however many ids,
        so no chunking, no SQLite variable limit and no per-id statement text to build and parse."""
        if self._pg:
            return f"{column} = ANY({self._db.param})", [ids]
        return f"{column} IN (SELECT value FROM json_each({self._db.param}))", [json.dumps(ids)]

    def _scalar(self, query: Any) -> Any:
        return query.bind(self._db).scalar()

    @contextmanager
    def _write_tx(self) -> Iterator[None]:
        """A write transaction.

        SQLite takes the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads first
        could not upgrade to a writer after another process committed. SQLite has one writer at a
        time anyway, so this process's threads queue on a lock first: 32 collect workers writing big
        snapshots then wait their turn instead of running out SQLite's busy timeout.
        """
        handle: Any = self._db
        with self._write_lock, handle.atomic() if self._pg else handle.atomic("IMMEDIATE"):
            yield

    @contextmanager
    def cache_neutral_write(self) -> Iterator[None]:
        """Around a write that no cached read depends on (the placement ledger, which rank reads
        uncached): a caching subclass keeps its caches across it. Here: nothing to keep."""
        yield

    def _dt_in(self, value: datetime | None) -> Any:
        """Aware (or naive UTC) datetime -> what the driver stores: naive UTC; text on SQLite, like peewee."""
        return _naive_opt(value) if self._pg else _utc_text(value)

    def _insert_many(
        self,
        model: type[Model],
        names: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        ignore: bool = False,
    ) -> None:
        """Bulk insert of already-converted tuples: peewee's insert_many builds SQL per value, ~7x slower.

        SQLite: executemany of one prepared INSERT. PostgreSQL: COPY (multi-row INSERTs of 100k rows
        spend seconds in client-side quoting and server-side parsing); with ``ignore`` (ON CONFLICT)
        few rows go through a multi-row INSERT, many through COPY into a temp table first.
        """
        if not rows:
            return
        fields = model._meta.fields
        table = _quote(model._meta.table_name)
        columns = ", ".join(_quote(fields[n].column_name) for n in names)
        cursor = self._sql.cursor()
        if self._pg:
            psycopg2 = hasattr(cursor, "copy_expert")  # psycopg (3) has cursor.copy() instead
            if psycopg2 and not ignore:
                cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", _copy_text(rows))
                return
            if psycopg2 and len(rows) > _BATCH:
                # COPY cannot skip conflicts: stage the rows, then one INSERT ... SELECT does.
                stage = _quote(f"stage_{model._meta.table_name}")
                cursor.execute(
                    f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {columns} FROM {table} WITH NO DATA"
                )
                cursor.copy_expert(f"COPY {stage} ({columns}) FROM STDIN", _copy_text(rows))
                cursor.execute(
                    f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} ON CONFLICT DO NOTHING"
                )
                cursor.execute(f"DROP TABLE {stage}")
                return
            conflict = " ON CONFLICT DO NOTHING" if ignore else ""
            sql = f"INSERT INTO {table} ({columns}) VALUES %s{conflict}"
            if psycopg2:
                import importlib

                extras: Any = importlib.import_module("psycopg2.extras")  # untyped: no stubs installed
                extras.execute_values(cursor, sql, rows, page_size=_BATCH)
                return
            group = "(" + ", ".join(["%s"] * len(names)) + ")"
            cursor.executemany(sql.replace("%s", group, 1), rows)
            return
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        marks = ", ".join("?" * len(names))
        cursor.executemany(f"{verb} INTO {table} ({columns}) VALUES ({marks})", rows)

    def _select_raw(self, query: Any) -> list[tuple[Any, ...]]:
        """Rows as the driver returns them (no per-value conversion): for large reads."""
        rows: list[tuple[Any, ...]] = self._sql.execute(query).fetchall()
        return rows

    # -- destinations and snapshots ---------------------------------------------------------

    def sync_destinations(self, destinations: Iterable[tuple[str, str, str]]) -> None:
        """Ensure a row per configured (id, scheduler, host); rows of removed destinations stay."""
        D = models.Destination
        with self._write_tx():
            for dest_id, scheduler, host in destinations:
                self._q(
                    D.insert(id=dest_id, scheduler=scheduler, host=host).on_conflict(
                        conflict_target=[D.id], update={D.scheduler: scheduler, D.host: host}
                    )
                ).execute()

    def set_disabled(self, dest_id: str, reason: str | None, until: datetime | None) -> bool:
        """Operator disable (``reason`` given) or enable (``reason`` None); False when no such row.

        A disable lives in the destination's row, so every DestinationSummary carries it: rank marks the
        destination infeasible until it is enabled or ``until`` passes (None: until enabled), status shows
        it, and a collect never clears it.
        """
        D = models.Destination
        stored_until = until.astimezone(UTC).replace(tzinfo=None) if until is not None and reason else None
        with self._write_tx():
            changed = self._q(
                D.update(disabled_reason=reason, disabled_until=stored_until).where(D.id == dest_id)
            ).execute()
        return bool(changed)

    def _ensure_destination(self, dest_id: str) -> None:
        """Writes for a destination sync_destinations has not seen still land (scheduler/host unknown)."""
        self._q(models.Destination.insert(id=dest_id, scheduler="", host="").on_conflict_ignore()).execute()

    def write_snapshot(
        self,
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

        All in one transaction: readers see the old snapshot or the new one, never a mix, and a
        crash mid-write leaves the old one. History: a job tracked in the previous snapshot
        (pending, running, or another state with a start time) and absent now finished at
        ``finished`` (the collect that first missed it, so an upper bound within one interval):

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
        dt_in = self._dt_in
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
        current_ids = {j.job_id for j in jobs}
        try:
            finished_count = self._replace(
                dest_id,
                summary,
                node_rows,
                partition_rows,
                job_rows,
                current_ids,
                run_id=run_id,
                started=started,
                finished=finished,
                history_days=history_days,
                max_gap_s=max_gap_s,
            )
        except self._db_errors as exc:
            raise StoreWriteError(f"storing the snapshot failed: {_one_line(exc)}") from exc
        return WriteResult(jobs=len(job_rows), finished=finished_count)

    def _replace(
        self,
        dest_id: str,
        summary: dict[str, int | str | None],
        node_rows: list[tuple[Any, ...]],
        partition_rows: list[tuple[Any, ...]],
        job_rows: list[tuple[Any, ...]],
        current_ids: set[str],
        *,
        run_id: str,
        started: datetime,
        finished: datetime,
        history_days: int,
        max_gap_s: float,
    ) -> int:
        """write_snapshot's transaction; returns the number of history rows recorded."""
        end = self._dt_in(finished)
        end_naive = _naive(finished)
        D, N, P, J = models.Destination, models.Node, models.Partition, models.Job
        with self._write_tx():
            self._ensure_destination(dest_id)
            prev_success = _naive_db(self._scalar(D.select(D.last_success).where(D.id == dest_id)))
            gap_ok = prev_success is not None and (end_naive - prev_success).total_seconds() <= max_gap_s
            tracked = self._select_raw(
                J.select(*[getattr(J, c) for c in _TRACKED_COLUMNS]).where(
                    (J.destination == dest_id) & J.state.in_([PENDING, RUNNING, OTHER])
                )
            )
            finished_rows = [
                row
                for prev in tracked
                if prev[0] not in current_ids
                and (row := self._history_row(dest_id, prev, end_naive, end, gap_ok)) is not None
            ]
            for model in (J, N, P):
                self._q(model.delete().where(model.destination == dest_id)).execute()
            self._insert_many(N, _NODE_COLUMNS, node_rows)
            self._insert_many(P, _PARTITION_COLUMNS, partition_rows)
            self._insert_many(J, _JOB_COLUMNS, job_rows)
            self._insert_many(models.FinishedJob, _FINISHED_COLUMNS, finished_rows, ignore=True)
            self._q(
                D.update(
                    last_attempt=end_naive,
                    last_success=end_naive,
                    reachable=True,
                    last_error=None,
                    **summary,
                ).where(D.id == dest_id)
            ).execute()
            self._add_run(dest_id, run_id, started, finished, ok=True, error=None)
            cutoff = end_naive - timedelta(days=history_days)
            self._prune(dest_id, cutoff)
            self._refresh_tool_history(dest_id, {row[6] for row in finished_rows if row[6]}, cutoff)
            self._refresh_all_tools(dest_id, bool(finished_rows), cutoff)
        return len(finished_rows)

    def _history_row(
        self, dest_id: str, prev: tuple[Any, ...], end: datetime, end_db: Any, gap_ok: bool
    ) -> tuple[Any, ...] | None:
        """A FinishedJob tuple for a vanished job (``prev`` in _TRACKED_COLUMNS order), or None."""
        job_id, state, partition, name, user, cores, mem_mb, submit_raw, start_raw, gid, key = prev
        submit = _naive_db(submit_raw)
        start = _naive_db(start_raw)
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
            self._dt_in(submit),
            self._dt_in(start),
            end_db,
            queue_s,
            run_s,
        )

    def _add_run(
        self, dest_id: str, run_id: str, started: datetime, finished: datetime, *, ok: bool, error: str | None
    ) -> None:
        self._q(
            models.CollectRun.insert(
                run_id=run_id,
                destination_id=dest_id,
                started=_naive(started),
                finished=_naive(finished),
                ok=ok,
                error=error,
                duration_s=max(0.0, (finished - started).total_seconds()),
            )
        ).execute()

    def _refresh_tool_history(self, dest_id: str, keys: set[str], cutoff: datetime) -> None:
        """Rebuild the tool_history rows of ``keys`` (new history) and of samples older than ``cutoff``
        (pruned), from finished_job itself: duplicates it ignored and pruning cannot leave them stale."""
        p = self._db.param
        pruned = self._fetch(
            f'SELECT "tool_key" FROM "tool_history" WHERE "destination_id" = {p} AND "oldest_end" < {p} '
            f'AND "tool_key" <> {p}',
            [dest_id, self._dt_in(cutoff), ALL_TOOLS],
        )
        keys.update(row[0] for row in pruned)
        if not keys:
            return
        # One query for every key, however many users' keys finished since the last collect.
        where, params = self._in_ids('"tool_key"', sorted(keys))
        ranked = (
            'SELECT "tool_key", "end_time", "id", "queue_s", "run_s", ROW_NUMBER() OVER (PARTITION BY '
            '"tool_key" ORDER BY "end_time" DESC, "id" DESC) AS "rn" FROM "finished_job" '
            f'WHERE "destination_id" = {p} AND {where}'
        )
        rows = self._fetch(
            f'SELECT "tool_key", "end_time", "id", "queue_s", "run_s" FROM ({ranked}) AS "newest" '
            f'WHERE "rn" <= {SAMPLES} ORDER BY "tool_key", "rn"',
            [dest_id, *params],
        )
        upserts = []
        for key, group in groupby(rows, key=itemgetter(0)):
            samples = list(group)
            ends = [_naive_db(r[1]) or _EPOCH for r in samples]
            blob = pack((end_seconds(e), float(r[2]), r[3], r[4]) for e, r in zip(ends, samples, strict=True))
            upserts.append((dest_id, key, self._dt_in(ends[-1]), blob))
            keys.discard(key)
        cursor = self._sql.cursor()
        if upserts:
            cursor.executemany(
                'INSERT INTO "tool_history" ("destination_id", "tool_key", "oldest_end", "samples") '
                f'VALUES ({p}, {p}, {p}, {p}) ON CONFLICT ("tool_key", "destination_id") DO UPDATE SET '
                '"oldest_end" = excluded."oldest_end", "samples" = excluded."samples"',
                upserts,
            )
        if keys:  # every sample pruned
            cursor.executemany(
                f'DELETE FROM "tool_history" WHERE "destination_id" = {p} AND "tool_key" = {p}',
                [(dest_id, key) for key in sorted(keys)],
            )

    def _refresh_all_tools(self, dest_id: str, new_history: bool, cutoff: datetime) -> None:
        """Rebuild the destination-wide samples row (tool_key ``ALL_TOOLS``: every finished job,
        Galaxy or not) when history was added or its oldest sample pruned: rank's typical job there."""
        p = self._db.param
        if not new_history and not self._fetch(
            f'SELECT 1 FROM "tool_history" WHERE "destination_id" = {p} AND "tool_key" = {p} '
            f'AND "oldest_end" < {p}',
            [dest_id, ALL_TOOLS, self._dt_in(cutoff)],
        ):
            return
        rows = self._fetch(
            'SELECT "end_time", "id", "queue_s", "run_s" FROM "finished_job" '
            f'WHERE "destination_id" = {p} ORDER BY "end_time" DESC, "id" DESC LIMIT {ALL_TOOLS_SAMPLES}',
            [dest_id],
        )
        cursor = self._sql.cursor()
        if not rows:
            cursor.execute(
                f'DELETE FROM "tool_history" WHERE "destination_id" = {p} AND "tool_key" = {p}',
                (dest_id, ALL_TOOLS),
            )
            return
        ends = [_naive_db(r[0]) or _EPOCH for r in rows]
        blob = pack((end_seconds(e), float(r[1]), r[2], r[3]) for e, r in zip(ends, rows, strict=True))
        cursor.execute(
            'INSERT INTO "tool_history" ("destination_id", "tool_key", "oldest_end", "samples") '
            f'VALUES ({p}, {p}, {p}, {p}) ON CONFLICT ("tool_key", "destination_id") DO UPDATE SET '
            '"oldest_end" = excluded."oldest_end", "samples" = excluded."samples"',
            (dest_id, ALL_TOOLS, self._dt_in(ends[-1]), blob),
        )

    def _prune(self, dest_id: str, cutoff: datetime) -> None:
        F, R = models.FinishedJob, models.CollectRun
        self._q(F.delete().where((F.destination_id == dest_id) & (F.end_time < cutoff))).execute()
        self._q(R.delete().where((R.destination_id == dest_id) & (R.started < cutoff))).execute()

    def record_failure(
        self, dest_id: str, error: str, *, run_id: str, started: datetime, finished: datetime
    ) -> None:
        """Record a failed attempt; the previous snapshot (nodes, jobs, summary, last_success) stays."""
        D = models.Destination
        with self._write_tx():
            self._ensure_destination(dest_id)
            self._q(
                D.update(last_attempt=_naive(finished), reachable=False, last_error=error).where(
                    D.id == dest_id
                )
            ).execute()
            self._add_run(dest_id, run_id, started, finished, ok=False, error=error)

    # -- readers ------------------------------------------------------------------------------

    def summaries(self, ids: Sequence[str] | None = None) -> list[DestinationSummary]:
        """Every destination (by id), or those of ``ids`` in that order; unknown ids are skipped.

        Raw SQL and driver rows: rank reads up to thousands of these per call, and peewee's per-value
        query building and field conversion cost several times the query itself.
        """
        if ids is None:
            rows = self._fetch(f'{_SUMMARY_SELECT} ORDER BY "id"', [])
        else:
            wanted = list(dict.fromkeys(ids))
            where, params = self._in_ids('"id"', wanted)
            found = {row[0]: row for row in self._fetch(f"{_SUMMARY_SELECT} WHERE {where}", params)}
            rows = [found[i] for i in wanted if i in found]
        return [_summary(row) for row in rows]

    def nodes(self, dest_id: str) -> list[Node]:
        N = models.Node
        fields = [getattr(N, c) for c in _NODE_COLUMNS[1:]]
        out = []
        for row in self._rows(N.select(*fields).where(N.destination == dest_id).order_by(N.id)):
            values = dict(zip(_NODE_COLUMNS[1:], row, strict=True))
            values["partitions"] = tuple(p for p in values["partitions"].split(",") if p)
            out.append(Node(**values))
        return out

    def partitions(self, dest_id: str) -> list[Partition]:
        P = models.Partition
        fields = [getattr(P, c) for c in _PARTITION_COLUMNS[1:]]
        out = []
        for row in self._rows(P.select(*fields).where(P.destination == dest_id).order_by(P.id)):
            values = dict(zip(_PARTITION_COLUMNS[1:], row, strict=True))
            values["limits"] = {str(k): str(v) for k, v in json.loads(values["limits"] or "{}").items()}
            out.append(Partition(**values))
        return out

    def jobs(self, dest_id: str) -> list[Job]:
        """The destination's jobs as of its last good snapshot, in snapshot order (fast for 100k jobs)."""
        J = models.Job
        names = _JOB_FIELDS
        rows = self._select_raw(
            J.select(*[getattr(J, c) for c in names]).where(J.destination == dest_id).order_by(J.id)
        )
        out = []
        for row in rows:
            values = dict(zip(names, row, strict=True))
            for name in ("submit_time", "start_time", "start_estimate", "estimated_at"):
                values[name] = _aware(_naive_db(values[name]))
            values["state"] = JobState(values["state"])
            out.append(Job(**values))
        return out

    def tool_times(self, tool_id: str, dest_ids: Sequence[str], limit: int = SAMPLES) -> dict[str, ToolTimes]:
        """Median queue/run time of the last ``limit`` finished jobs of this tool, per destination.

        Every requested id is in the result (count 0 when there is no history). The tool matches
        ``tool_key`` ``k`` or ``k_*`` (see ``metasched.store.galaxy``): an equality or a byte-order
        range (``k_`` <= tool_key < ``k` ``, backquote following underscore). Up to ``SAMPLES``, the
        samples write_snapshot keeps per (destination, tool_key) answer it: one row per destination
        and key instead of one per job (most of rank's read at a thousand destinations); the medians
        are over the newest ``limit`` jobs of all matching keys together, as from the history itself.
        """
        wanted = list(dict.fromkeys(dest_ids))
        key = tool_key(tool_id)
        if not key or not wanted or limit <= 0:
            return dict.fromkeys(wanted, ToolTimes(0, None, None))
        if limit > SAMPLES:
            return self._tool_times_from_history(key, wanted, limit)
        p = self._db.param
        column = '"tool_key" COLLATE "C"' if self._pg else '"tool_key"'
        sql = (
            'SELECT "destination_id", "samples" FROM "tool_history" '
            f'WHERE ("tool_key" = {p} OR ({column} >= {p} AND {column} < {p}))'
        )
        params: list[Any] = [key, key + "_", key + "`"]
        if 2 * len(wanted) < self._destination_count():
            where, ids = self._in_ids('"destination_id"', wanted)
            sql += f" AND {where}"
            params += ids
        wanted_set = set(wanted)
        blobs: defaultdict[str, list[bytes | memoryview]] = defaultdict(list)
        for dest, blob in self._fetch(sql, params):
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
                    (
                        tuple(v[i : i + 4])
                        for v in [values, *map(unpack, found[1:])]
                        for i in range(0, len(v), 4)
                    ),
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

    def typical_run_s(self, dest_ids: Sequence[str]) -> dict[str, float]:
        """Median run time of the newest finished jobs (any tool, Galaxy or not) per destination:
        how fast the work queued there drains. Destinations without such history are left out.
        One indexed query over one samples row per destination."""
        wanted = list(dict.fromkeys(dest_ids))
        if not wanted:
            return {}
        p = self._db.param
        sql = f'SELECT "destination_id", "samples" FROM "tool_history" WHERE "tool_key" = {p}'
        params: list[Any] = [ALL_TOOLS]
        if 2 * len(wanted) < self._destination_count():
            where, ids = self._in_ids('"destination_id"', wanted)
            sql += f" AND {where}"
            params += ids
        wanted_set = set(wanted)
        out: dict[str, float] = {}
        for dest, blob in self._fetch(sql, params):
            if dest in wanted_set:
                runs = [x for x in unpack(blob)[3::4] if x == x]  # NaN: unknown
                if runs:
                    out[dest] = statistics.median(runs)
        return out

    def _destination_count(self) -> int:
        count: int = self._fetch('SELECT COUNT(*) FROM "destination"', [])[0][0]
        return count

    def _tool_times_from_history(self, key: str, wanted: list[str], limit: int) -> dict[str, ToolTimes]:
        """tool_times from finished_job itself, for limits beyond the kept samples. The tool's rows come
        from the covering (tool_key, destination_id, end_time, queue_s, run_s) index by an equality
        or a byte-order range (``k_`` <= tool_key < ``k` ``, backquote following underscore), in one
        query with no ordering: ranking every row by end time in the database costs more than the
        whole read. Only destinations with more than ``limit`` such rows are read again, newest
        ``limit`` first.
        """
        found: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
        p = self._db.param
        column = '"tool_key" COLLATE "C"' if self._pg else '"tool_key"'
        matches = f'("tool_key" = {p} OR ({column} >= {p} AND {column} < {p}))'
        keys = [key, key + "_", key + "`"]
        # SQLite's planner (no statistics) would rather walk the (destination_id, end_time) index,
        # i.e. every history row of those destinations; a unary + takes that index out of the race.
        dest_column = '"destination_id"' if self._pg else '+"destination_id"'
        columns = '"destination_id", "queue_s", "run_s"'
        sql = f'SELECT {columns} FROM "finished_job" WHERE {matches}'
        params: list[Any] = []
        # TPV asks about the destinations it is configured with, i.e. usually most of the store:
        # then testing every row against the id list in SQL costs more than dropping the few
        # rows of other destinations here.
        if 2 * len(wanted) < self._destination_count():
            where, params = self._in_ids(dest_column, wanted)
            sql += f" AND {where}"
        wanted_set = set(wanted)
        # A destination's rows mostly arrive together (index order): append them by runs. Any
        # order gives the same result; this only saves per-row work.
        for dest, run in groupby(self._fetch(sql, [*keys, *params]), key=itemgetter(0)):
            if dest in wanted_set:
                found[dest].extend(run)
        many = [dest for dest, rows in found.items() if len(rows) > limit]
        if many:
            where, params = self._in_ids(dest_column, many)
            recent = (
                f"SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY "
                '"destination_id" ORDER BY "end_time" DESC, "id" DESC) AS "rn" FROM "finished_job" '
                f"WHERE {matches} AND {where}"
            )
            sql = f'SELECT {columns} FROM ({recent}) AS "recent" WHERE "rn" <= {p}'
            for dest in many:
                found[dest] = []
            for row in self._fetch(sql, [*keys, *params, limit]):
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

    def history(self, dest_id: str | None = None, limit: int = 100) -> list[FinishedRecord]:
        """Newest finished-job history rows first (all destinations, or one)."""
        F = models.FinishedJob
        names = ("destination_id", *_FINISHED_COLUMNS[1:])
        query = (
            F.select(*[getattr(F, c) for c in names]).order_by(F.end_time.desc(), F.id.desc()).limit(limit)
        )
        if dest_id is not None:
            query = query.where(F.destination_id == dest_id)
        out = []
        for row in self._rows(query):
            values = dict(zip(names, row, strict=True))
            for name in ("submit_time", "start_time", "end_time"):
                values[name] = _aware(values[name])
            out.append(FinishedRecord(**values))
        return out

    def runs(self, limit: int = 50, dest_id: str | None = None) -> list[RunRecord]:
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
            RunRecord(rid, dest, _aware_req(st), _aware_req(fin), bool(ok), err, float(dur))
            for rid, dest, st, fin, ok, err, dur in self._rows(query)
        ]

    def last_runs(self, dest_id: str, limit: int = 10) -> list[RunRecord]:
        return self.runs(limit=limit, dest_id=dest_id)

    # -- metrics ------------------------------------------------------------------------------

    def replace_metrics(self, source: str, rows: Sequence[MetricRow], fetched_at: datetime) -> None:
        """Replace every cached row of ``source`` in one transaction.

        Rows are stored under ``source`` (their own ``source`` field is not consulted) and with
        ``fetched_at``; of rows with equal (destination_id, tool_id, name) the last one wins.
        """
        latest: dict[tuple[str, str, str], MetricRow] = {}
        for r in rows:
            latest[(r.destination_id, r.tool_id, r.name)] = r
        fetched = self._dt_in(fetched_at)
        values = [
            (
                source,
                r.destination_id,
                r.tool_id,
                r.name,
                r.value,
                r.text,
                self._dt_in(r.observed_at),
                fetched,
            )
            for r in latest.values()
        ]
        M = models.Metric
        with self._write_tx():
            self._q(M.delete().where(M.source == source)).execute()
            self._insert_many(M, _METRIC_COLUMNS, values)

    def metrics(self, dest_ids: Sequence[str], tool_id: str | None = None) -> list[MetricRow]:
        """Cached metric rows for these destinations: per-destination rows plus this tool's rows,
        of any version of a Tool Shed tool (``tool_id`` with another last segment, or none)."""
        p = self._db.param
        tools = [""] if not tool_id else ["", tool_id]
        base = versionless(tool_id) if tool_id else ""
        if base != (tool_id or ""):
            tools.append(base)
        where, params = self._in_ids('"destination_id"', list(dict.fromkeys(dest_ids)))
        match = f'"tool_id" IN ({", ".join([p] * len(tools))})'
        extra: list[Any] = []
        if base != (tool_id or ""):
            # Any version: base + "/" <= tool_id < base + "0" ("0" follows "/" in byte order).
            column = '"tool_id" COLLATE "C"' if self._pg else '"tool_id"'
            match = f"({match} OR ({column} >= {p} AND {column} < {p}))"
            extra = [base + "/", base + "0"]
        sql = (
            'SELECT "source", "destination_id", "name", "value", "text", "tool_id", "observed_at", '
            f'"fetched_at" FROM "metric" WHERE {where} AND {match} '
            'ORDER BY "source", "destination_id", "tool_id", "name"'
        )
        # Rows of one fetch share a few timestamps (one fetched_at per source): parse each once.
        dates: dict[Any, datetime | None] = {}
        out = []
        rows = self._fetch(sql, [*params, *tools, *extra])
        for src, dest, name, value, text, tid, observed, fetched in rows:
            seen = dates.get(observed, _UNSET)
            if seen is _UNSET:
                seen = dates[observed] = _aware_db(observed)
            got = dates.get(fetched, _UNSET)
            if got is _UNSET:
                got = dates[fetched] = _aware_db(fetched)
            # value is a REAL / double precision column: a float or None from either driver.
            out.append(MetricRow(src, dest, name, value, text, tid, seen, got))
        return out

    # -- settings -----------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        S = models.Setting
        value = self._scalar(S.select(S.value).where(S.key == key))
        return None if value is None else str(value)

    def set_setting(self, key: str, value: str | None) -> None:
        """``None`` removes the setting."""
        with self._write_tx():
            if value is None:
                self._q(models.Setting.delete().where(models.Setting.key == key)).execute()
            else:
                self._put_setting(key, value)

    def _put_setting(self, key: str, value: str) -> None:
        S = models.Setting
        self._q(
            S.insert(key=key, value=value).on_conflict(conflict_target=[S.key], update={S.value: value})
        ).execute()


# -- helpers ------------------------------------------------------------------------------------


def _make_database(
    url: str, *, readonly: bool = False, busy_timeout: float | None = None, connect_timeout: int = 10
) -> tuple[Database, str]:
    """A peewee database for ``url`` plus a password-free form of it for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _sqlite(url, readonly, busy_timeout), url
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(
                [f"database: {url!r}: use sqlite:///relative/path, sqlite:////absolute/path or a plain path"]
            )
        return _sqlite(rest[1:], readonly, busy_timeout), url
    if scheme in ("postgresql", "postgres"):
        return _postgres(url, readonly, busy_timeout, connect_timeout)
    raise ConfigError(
        [
            f"database: unsupported URL scheme {scheme!r} (use a path, sqlite:///path or postgresql://user@host/db)"
        ]
    )


def _create_shareable(file: Path) -> None:
    """Create a new database file as 0666 minus the umask, where SQLite would use 0644 minus it.

    The umask is the operator's sharing decision (docs/serve.md: ``UMask=0007`` lets group members such
    as Galaxy's user read the state and write rank's placement ledger); SQLite's 0644 would always deny
    the group write. An empty file is a valid empty database; its -wal/-shm files get the same mode.
    Existing files, and failures (SQLite then reports them when it opens the file), are left alone.
    """
    with suppress(OSError):
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _sqlite(path: str, readonly: bool = False, busy_timeout: float | None = None) -> SqliteDatabase:
    file = Path(path).expanduser()
    timeout = BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout
    if readonly:  # no journal_mode change (it needs a write lock) and no writes at all
        return SqliteDatabase(
            str(file), timeout=timeout, pragmas={"busy_timeout": int(timeout * 1000), "query_only": 1}
        )
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            [f"database: cannot create directory {file.parent}: {exc.strerror or exc}"]
        ) from exc
    _create_shareable(file)
    return SqliteDatabase(
        str(file),
        timeout=timeout,
        pragmas={
            "journal_mode": "wal",
            "busy_timeout": int(timeout * 1000),
            "foreign_keys": 1,
            "synchronous": "normal",
        },
    )


def _postgres(
    url: str, readonly: bool = False, busy_timeout: float | None = None, connect_timeout: int = 10
) -> tuple[PostgresqlDatabase, str]:
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
        raise ConfigError(
            ["database: a postgresql:// URL needs psycopg2 (pip install 'metasched[postgres]')"]
        )
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError([f"database: invalid port in {_redact(url)}"]) from None
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ConfigError([f"database: {_redact(url)}: no database name (postgresql://user@host/DBNAME)"])
    params: dict[str, Any] = dict(parse_qsl(parts.query))
    for key, value in (
        ("host", parts.hostname),
        ("port", port),
        ("user", unquote(parts.username) if parts.username else None),
        ("password", unquote(parts.password) if parts.password else None),
    ):
        if value is not None:
            params.setdefault(key, value)
    params.setdefault("connect_timeout", connect_timeout)
    settings = []
    if readonly:
        settings.append("-c default_transaction_read_only=on")
    if busy_timeout is not None:
        settings.append(
            f"-c lock_timeout={int(busy_timeout * 1000)} -c statement_timeout={int(busy_timeout * 1000)}"
        )
    if settings and "options" not in params:
        params["options"] = " ".join(settings)
    return PostgresqlDatabase(dbname, **params), _redact(url)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _naive(value: datetime) -> datetime:
    """Aware -> naive UTC (the stored form); naive values are taken as UTC already."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: Any) -> str:
    """One field in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if type(value) is str:
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.translate(_COPY_ESCAPES)
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(" ")
    return str(value)


def _copy_text(rows: Iterable[tuple[Any, ...]]) -> io.StringIO:
    buf = io.StringIO()
    buf.writelines("\t".join([_copy_value(v) for v in row]) + "\n" for row in rows)
    buf.seek(0)
    return buf


def _naive_opt(value: datetime | None) -> datetime | None:
    return None if value is None else _naive(value)


def _utc_text(value: datetime | None) -> str | None:
    """The text SQLite stores for a datetime (naive UTC, the ``str()`` form peewee and sqlite3 write).

    Hot for 100k-job snapshots: UTC-aware values, the adapters' normal case, take one ``str`` call.
    """
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.isoformat(" ")[:-6]  # drop "+00:00"; twice as fast as str() + replace()
    return _naive(value).isoformat(" ")


def _naive_db(value: Any) -> datetime | None:
    """A datetime column as the driver returned it (ISO text on SQLite) -> naive UTC datetime."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        field: Any = _DT_FIELD  # other formats peewee accepts (e.g. a bare date)
        parsed = field.python_value(value)
        return parsed if isinstance(parsed, datetime) else None


def _aware_db(value: Any) -> datetime | None:
    """A datetime column as the driver returned it -> aware UTC.

    SQLite's naive UTC text parses straight to an aware value (``+00:00`` gives the UTC singleton):
    ``datetime.replace`` costs ten times the parse, and rank converts thousands of these per call.
    """
    if type(value) is str:
        try:
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            pass
    return _aware(_naive_db(value))


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _aware_req(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


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


def _summary(row: tuple[Any, ...]) -> DestinationSummary:
    """A _SUMMARY_SELECT row -> DestinationSummary, positionally (rank converts a thousand per call).

    The count columns are NOT NULL integers already; only booleans and dates need converting.
    """
    values: list[Any] = list(row)
    values[3] = bool(values[3])
    values[4] = _aware_db(values[4])
    values[5] = _aware_db(values[5])
    until = 8 + len(_SUMMARY_FIELDS)  # disabled_until
    values[until] = _aware_db(values[until])
    values[-1] = decode(values[-1])  # start_estimates
    return DestinationSummary(*values)
