"""``Store``: the one object callers hold. Thin: each method delegates to the module that owns it
(``snapshots``, ``rank_reads``, ``inflight``, ``audit``, ``metric_cache``, ``kv``) over one ``Database``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Self

from metasched.domain.destination import DestinationSummary, MetricRow, PlacementEntry, ToolTimes
from metasched.domain.jobs import Job, Node, Partition, Snapshot
from metasched.store import audit, inflight, kv, metric_cache, opening, rank_reads, snapshots
from metasched.store.audit import FinishedRecord, RunRecord
from metasched.store.database import Database
from metasched.store.samples import SAMPLES
from metasched.store.snapshots import HISTORY_DAYS, MAX_GAP_S, WriteResult


class Store:
    """Opens (creating or migrating) a SQLite file or PostgreSQL database and reads/writes state.

    One Store may be shared by every thread of a process (collect's fan-out workers, serve's request
    handlers). Between processes, SQLite runs in WAL mode: rank and status read the last committed
    state while collect writes, and writers wait up to ``BUSY_TIMEOUT_S`` for each other.
    """

    def __init__(self, db: Database) -> None:
        """Use ``Store.open``; this only wraps a prepared database."""
        self.db = db

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
        return cls(
            opening.open_database(
                url, readonly=readonly, busy_timeout=busy_timeout, connect_timeout=connect_timeout
            )
        )

    def close(self) -> None:
        """Close the calling thread's connection (other threads' close when those threads end)."""
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return self.db.url

    @property
    def is_postgres(self) -> bool:
        return self.db.is_postgres

    def schema_version(self) -> int:
        return opening.schema_version(self.db)

    # -- writes (metasched.store.snapshots) ---------------------------------------------------

    def sync_destinations(self, destinations: Iterable[tuple[str, str, str]]) -> None:
        snapshots.sync_destinations(self.db, destinations)

    def set_disabled(self, dest_id: str, reason: str | None, until: datetime | None) -> bool:
        return snapshots.set_disabled(self.db, dest_id, reason, until)

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
        return snapshots.write_snapshot(
            self.db,
            dest_id,
            snapshot,
            run_id=run_id,
            started=started,
            finished=finished,
            history_days=history_days,
            max_gap_s=max_gap_s,
        )

    def record_failure(
        self, dest_id: str, error: str, *, run_id: str, started: datetime, finished: datetime
    ) -> None:
        snapshots.record_failure(self.db, dest_id, error, run_id=run_id, started=started, finished=finished)

    # -- rank's reads (metasched.store.rank_reads) --------------------------------------------

    def summaries(self, ids: Sequence[str] | None = None) -> list[DestinationSummary]:
        return rank_reads.summaries(self.db, ids)

    def tool_times(self, tool_id: str, dest_ids: Sequence[str], limit: int = SAMPLES) -> dict[str, ToolTimes]:
        return rank_reads.tool_times(self.db, tool_id, dest_ids, limit)

    def typical_run_s(self, dest_ids: Sequence[str]) -> dict[str, float]:
        return rank_reads.typical_run_s(self.db, dest_ids)

    def inflight_placements(self, dest_ids: Sequence[str], since: datetime) -> list[PlacementEntry]:
        """The placement ledger's in-flight entries at ``dest_ids`` placed at ``since`` or later."""
        return inflight.inflight(self.db, dest_ids, since)

    def inflight_by_destination(
        self, dest_ids: Sequence[str], since: datetime
    ) -> Mapping[str, Sequence[PlacementEntry]]:
        """``inflight_placements`` by destination (those with none left out), each oldest first."""
        placed: dict[str, list[PlacementEntry]] = {}
        for entry in self.inflight_placements(dest_ids, since):
            placed.setdefault(entry.destination, []).append(entry)
        return placed

    # -- status and audit reads (metasched.store.audit) ---------------------------------------

    def nodes(self, dest_id: str) -> list[Node]:
        return audit.nodes(self.db, dest_id)

    def partitions(self, dest_id: str) -> list[Partition]:
        return audit.partitions(self.db, dest_id)

    def jobs(self, dest_id: str) -> list[Job]:
        return audit.jobs(self.db, dest_id)

    def history(self, dest_id: str | None = None, limit: int = 100) -> list[FinishedRecord]:
        return audit.history(self.db, dest_id, limit)

    def runs(self, limit: int = 50, dest_id: str | None = None) -> list[RunRecord]:
        return audit.runs(self.db, limit, dest_id)

    def last_runs(self, dest_id: str, limit: int = 10) -> list[RunRecord]:
        return audit.runs(self.db, limit, dest_id)

    # -- metrics cache (metasched.store.metric_cache) -----------------------------------------

    def replace_metrics(self, source: str, rows: Sequence[MetricRow], fetched_at: datetime) -> None:
        metric_cache.replace_metrics(self.db, source, rows, fetched_at)

    def metrics(self, dest_ids: Sequence[str], tool_id: str | None = None) -> list[MetricRow]:
        return metric_cache.metrics(self.db, dest_ids, tool_id)

    # -- settings (metasched.store.kv) --------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        return kv.get_setting(self.db, key)

    def set_setting(self, key: str, value: str | None) -> None:
        """``None`` removes the setting."""
        kv.set_setting(self.db, key, value)
