"""The state store: what collect writes and rank/status/serve read. See ``store.models`` for tables.

Callers use ``Store`` only; models stay an implementation detail of this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from metasched.collect.types import Job, Node, Partition, Snapshot


@dataclass(frozen=True, slots=True)
class DestinationSummary:
    """A destination's last known state as rank and status need it. Times are aware UTC."""

    id: str
    scheduler: str
    host: str
    reachable: bool
    last_attempt: datetime | None
    last_success: datetime | None
    error: str | None
    cores_total: int
    cores_free: int
    mem_total_mb: int
    mem_free_mb: int
    gpus_total: int
    gpus_free: int
    nodes_total: int
    nodes_unavailable: int
    jobs_running: int
    jobs_queued: int
    jobs_held: int
    queued_cores: int
    running_cores: int
    disabled_reason: str | None = None
    disabled_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ToolTimes:
    """Per-tool history at one destination (seconds)."""

    count: int
    median_queue_s: float | None
    median_run_s: float | None


@dataclass(frozen=True, slots=True)
class MetricRow:
    source: str
    destination_id: str
    name: str
    value: float | None = None
    text: str | None = None
    tool_id: str = ""
    observed_at: datetime | None = None
    fetched_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    jobs: int
    finished: int  # jobs recorded into finished-job history by this write


class Store:
    """Opens (creating or migrating) a SQLite file or PostgreSQL database and reads/writes state."""

    @classmethod
    def open(cls, url: str) -> Store:
        """``url``: a path, ``sqlite:///path`` or ``postgresql://user@host/db``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        raise NotImplementedError

    def sync_destinations(self, destinations: Iterable[tuple[str, str, str]]) -> None:
        """Ensure a row per configured (id, scheduler, host); rows of removed destinations stay."""
        raise NotImplementedError

    def write_snapshot(
        self,
        dest_id: str,
        snapshot: Snapshot,
        *,
        run_id: str,
        started: datetime,
        finished: datetime,
    ) -> WriteResult:
        """Replace the destination's nodes/partitions/jobs and summary, record history and the run: one transaction."""
        raise NotImplementedError

    def record_failure(
        self, dest_id: str, error: str, *, run_id: str, started: datetime, finished: datetime
    ) -> None:
        """Record a failed attempt; the previous snapshot stays untouched."""
        raise NotImplementedError

    def summaries(self, ids: Sequence[str] | None = None) -> list[DestinationSummary]:
        raise NotImplementedError

    def nodes(self, dest_id: str) -> list[Node]:
        raise NotImplementedError

    def partitions(self, dest_id: str) -> list[Partition]:
        raise NotImplementedError

    def jobs(self, dest_id: str) -> list[Job]:
        raise NotImplementedError

    def tool_times(self, tool_id: str, dest_ids: Sequence[str], limit: int = 200) -> dict[str, ToolTimes]:
        """Median queue/run time of the last ``limit`` finished jobs of this tool, per destination."""
        raise NotImplementedError

    def replace_metrics(self, source: str, rows: Sequence[MetricRow], fetched_at: datetime) -> None:
        """Replace every cached row of ``source`` in one transaction."""
        raise NotImplementedError

    def metrics(self, dest_ids: Sequence[str], tool_id: str | None = None) -> list[MetricRow]:
        """Cached metric rows for these destinations: per-destination rows plus this tool's rows."""
        raise NotImplementedError

    def get_setting(self, key: str) -> str | None:
        raise NotImplementedError

    def set_setting(self, key: str, value: str | None) -> None:
        raise NotImplementedError
