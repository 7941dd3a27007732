"""The scheduler's expected starts of a destination's pending jobs, reduced to what rank needs.

Rank asks: for a new job of (cores, mem, gpus), what is the latest expected start among the pending
jobs no bigger than it in every resource? A job at least as big as one ahead cannot start before
that one: the first slot big enough for both goes to the one ahead (priority), so the one ahead's
expected start is a lower bound for the new job. Smaller jobs ahead are not: the new job may fit
where they do not. The answer only needs the pending jobs that are not *dominated*: a job ahead
that is no smaller, starts no later and was estimated no more recently than another one adds
nothing (every new job that counts it also counts the other, which gives at least as late a start,
and the other is no staler). So collect stores that Pareto set, at most ``LIMIT`` entries, on the
destination row: rank reads it with the summary, in the same query, and never scans jobs.

Entries are ``StartEstimate(cores, mem_mb, gpus, start, estimated_at)``, times as epoch seconds (UTC).
Dropping entries (the cap) only lowers the bound: the wait stays "at least" what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from metasched.domain.jobs import PENDING, Job

LIMIT = 64  # entries per destination: request shapes x evaluation passes, far below this in practice


class StartEstimate(NamedTuple):
    cores: int
    mem_mb: int
    gpus: int
    start: float  # epoch seconds: when the scheduler expects the job to start
    estimated_at: float  # epoch seconds: when it computed that (the collect time when unknown)


def _epoch(value: datetime) -> float:
    """Epoch seconds; a naive value is UTC already (the store's convention)."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def reduce(jobs: Iterable[Job], collected: datetime, limit: int = LIMIT) -> list[StartEstimate]:
    """The non-dominated estimates of the pending jobs that start after ``collected``, latest first."""
    now = round(_epoch(collected))
    best: dict[tuple[int, int, int, int], int] = {}  # (shape, start) -> newest evaluation
    for j in jobs:
        if j.state != PENDING or j.start_estimate is None:
            continue
        start = round(_epoch(j.start_estimate))
        if start <= now:
            continue  # due already: the job ahead takes what frees next, no bound beyond "now"
        evaluated = now if j.estimated_at is None else min(now, round(_epoch(j.estimated_at)))
        key = (j.cores, j.mem_mb, j.gpus, start)
        if best.get(key, -1) < evaluated:
            best[key] = evaluated
    # Latest start first (then freshest): an entry is kept unless an earlier-listed one dominates it.
    ordered = sorted(
        (StartEstimate(c, m, g, s, e) for (c, m, g, s), e in best.items()),
        key=lambda x: (-x.start, -x.estimated_at, x.cores, x.mem_mb, x.gpus),
    )
    kept: list[StartEstimate] = []
    for cand in ordered:
        if not any(
            k.cores <= cand.cores
            and k.mem_mb <= cand.mem_mb
            and k.gpus <= cand.gpus
            and k.estimated_at >= cand.estimated_at
            for k in kept
        ):
            kept.append(cand)
            if len(kept) >= limit:
                break
    return kept
