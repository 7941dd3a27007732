"""The start-estimate term: the scheduler's own expected start of pending work the job cannot pass
(Slurm's backfill) raises the model's queue time; see docs/rank.md "The scheduler's start estimate".
"""

from __future__ import annotations

from typing import NamedTuple

from metasched.rank.model import MB_PER_GB, Estimate, JobSpec, Observed, StartEstimates, fmt_num, model_queue
from metasched.settings.weights import Weights


class Blocking(NamedTuple):
    """The latest expected start among the pending jobs a job cannot pass, as seen from ``now``."""

    wait_s: float  # until the scheduler expects it to start
    age_s: float  # since the scheduler computed that
    job: Estimate  # the job ahead


def blocking_start(job: JobSpec, est: StartEstimates) -> tuple[Blocking | None, Blocking | None]:
    """(fresh, stale): the latest expected start the job cannot pass among fresh estimates, and
    among older ones when it is later still (to say what was ignored); None when there is none.

    A job at least as big as one ahead in every resource cannot start before it: the first slot big
    enough for both goes to the one ahead (metasched.store.start_estimates). Smaller ones ahead are
    no bound, the job may fit where they do not. One due already bounds nothing. Equal starts go to
    the freshest estimate.
    """
    now, max_age = est.now, est.max_age_s
    cores, mem_mb, gpus = job.cores, job.mem_mb, job.gpus
    fresh: Estimate | None = None
    stale: Estimate | None = None
    for e in est.entries:
        start, at = e[3], e[4]
        if start <= now or e[0] > cores or e[1] > mem_mb or e[2] > gpus:
            continue  # due, or bigger in some resource: the job may start where this one cannot
        if now - at > max_age:
            if stale is None or start > stale[3]:
                stale = e
        elif fresh is None or start > fresh[3] or (start == fresh[3] and at > fresh[4]):
            fresh = e
    if stale is not None and fresh is not None and stale[3] <= fresh[3]:
        stale = None
    return (
        None if fresh is None else Blocking(fresh[3] - now, max(0.0, now - fresh[4]), fresh),
        None if stale is None else Blocking(stale[3] - now, now - stale[4], stale),
    )


def _shape(e: Estimate) -> str:
    cores, mem_mb, gpus = e[0], e[1], e[2]
    parts = [f"{fmt_num(cores)} core{'s' if cores != 1 else ''}", f"{mem_mb / MB_PER_GB:,.1f} GB"]
    if gpus:
        parts.append(f"{fmt_num(gpus)} GPU{'s' if gpus != 1 else ''}")
    return ", ".join(parts)


def queue_time(job: JobSpec, obs: Observed, w: Weights, explain: bool = True) -> tuple[float, list[str]]:
    """Blend of the state-based wait and the historical median queue time of this tool here, raised
    to the scheduler's own expected start of the pending work the job cannot pass, where it has one;
    why (nothing unless ``explain``)."""
    seconds, why = model_queue(job, obs, w, explain)
    est = obs.estimates
    if est is None:
        return seconds, [f"queue {seconds:,.0f} s: {why}"] if explain else []
    fresh, stale = blocking_start(job, est)
    reasons: list[str] = []
    if not explain:
        return (fresh.wait_s if fresh is not None and fresh.wait_s > seconds else seconds), reasons
    if fresh is not None and fresh.wait_s > seconds:
        model_s, seconds = seconds, fresh.wait_s
        reasons.append(
            f"queue {seconds:,.0f} s: {est.by} expects pending work ahead to start in {seconds:,.0f} s "
            f"(estimated {fresh.age_s:,.0f} s ago; a job of {_shape(fresh.job)} that this one cannot "
            f"pass), later than the model's {model_s:,.0f} s ({why})"
        )
    else:
        reasons.append(f"queue {seconds:,.0f} s: {why}")
    if stale is not None and stale.wait_s > seconds:
        reasons.append(
            f"{est.by}'s expected start in {stale.wait_s:,.0f} s of pending work ahead ignored: estimated "
            f"{stale.age_s:,.0f} s ago > {est.max_age_s:,.0f} s"
        )
    return seconds, reasons
