"""What a destination holds: nodes, partitions and jobs, as adapters produce them and the store keeps them.

Units: memory in MB (MiB as schedulers report them), times as timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class JobState(StrEnum):
    """Normalised job states. Only PENDING counts as demand; HELD (user/admin hold, dependency,
    error states such as SGE Eqw) does not; OTHER is completing, suspended, ..."""

    PENDING = "pending"
    RUNNING = "running"
    HELD = "held"
    OTHER = "other"


PENDING = JobState.PENDING
RUNNING = JobState.RUNNING
HELD = JobState.HELD
OTHER = JobState.OTHER


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    state: str  # scheduler's own state text, flags kept (e.g. "idle*", "down~", "mixed")
    available: bool  # False for down, drained, not responding, powered off, ...
    cores_total: int
    cores_alloc: int = 0
    mem_total_mb: int = 0
    mem_alloc_mb: int = 0
    mem_free_mb: int | None = None  # what the OS reports free, when known
    gpus_total: int = 0
    gpus_alloc: int = 0
    load_1: float | None = None
    load_5: float | None = None
    load_15: float | None = None
    partitions: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Partition:
    """A Slurm partition, SGE queue, HTCondor pool or YARN queue."""

    name: str
    is_default: bool = False
    state: str = "up"
    available: bool = True
    nodes_total: int = 0
    cores_total: int = 0
    limits: Mapping[str, str] = field(default_factory=dict)  # e.g. MaxTime, MaxNodes, MaxMemPerNode


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str  # scheduler id as text; array tasks like "123_4"
    state: JobState
    partition: str = ""
    name: str = ""
    user: str = ""
    raw_state: str = ""  # scheduler's own state text
    reason: str = ""  # pending reason
    cores: int = 1
    mem_mb: int = 0
    gpus: int = 0
    submit_time: datetime | None = None
    start_time: datetime | None = None
    nodes: str = ""
    # The scheduler's expected start of a pending job (Slurm's backfill; None where a scheduler has
    # none, e.g. SGE, HTCondor) and when it computed it (None: unknown, the collect time stands in).
    start_estimate: datetime | None = None
    estimated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one collect learned about one destination."""

    nodes: Sequence[Node] = ()
    partitions: Sequence[Partition] = ()
    jobs: Sequence[Job] = ()
