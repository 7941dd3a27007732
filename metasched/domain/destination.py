"""What rank and status know of a destination: its summary, history figures, metrics, start estimates and
the placements rank made there."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from metasched.domain.start_estimates import StartEstimate


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
    # Largest available node: a job runs on one node. None when none is available or not known yet.
    max_node_cores: int | None = None
    max_node_mem_mb: int | None = None
    max_node_gpus: int | None = None
    # The scheduler's expected starts of the pending jobs (Slurm's backfill), non-dominated ones
    # only (see ``metasched.store.start_estimates``); () where the scheduler has none.
    start_estimates: tuple[StartEstimate, ...] = ()

    def disabled_at(self, now: datetime) -> bool:
        """An operator disable in force at ``now``: one whose ``until`` has passed has lapsed."""
        return self.disabled_reason is not None and (self.disabled_until is None or self.disabled_until > now)


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
class PlacementEntry:
    """One rank answer for one Galaxy job. Memory in MB; ``placed_at`` aware (or naive) UTC."""

    job_id: str
    destination: str
    tool_id: str
    cores: float
    mem_mb: float
    gpus: float
    placed_at: datetime
    pred_staging_s: float
    pred_queue_s: float
    pred_run_s: float
    # When the job reaches the scheduler's queue (Pulsar stages before it submits): placed_at plus
    # the predicted staging. Derived once, as rank compares it for every placement of every request.
    arrives_at: datetime = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        arrives = self.placed_at + timedelta(seconds=max(self.pred_staging_s, 0.0))
        object.__setattr__(self, "arrives_at", arrives)
