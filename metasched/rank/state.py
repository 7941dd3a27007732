"""What rank knows about each destination: the store read in a few queries, merged into ``Observed``.

Reading is I/O (``load_state``, ``open_existing_store``); merging (``observe``) is pure so it can be
tested with constructed rows. Precedence per value: the request's inline metrics, then the collected
summary if fresh, then cached InfluxDB metrics if fresh. Stale or missing values stay ``None``
(unknown), never "free".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import msgspec

from metasched.domain.destination import DestinationSummary, MetricRow, PlacementEntry, ToolTimes
from metasched.domain.start_estimates import StartEstimate
from metasched.rank.model import MB_PER_GB, Observed, StartEstimates, fmt_num
from metasched.rank.request import NO_METRICS, DestinationRequest
from metasched.settings import DestinationConfig
from metasched.settings.database_url import sqlite_path
from metasched.store import Store
from metasched.store.galaxy import versionless

log = logging.getLogger(__name__)

STATE_METRICS = frozenset(
    {
        "queued",
        "running",
        "free_cores",
        "free_mem_mb",
        "free_gpus",
        "total_cores",
        "total_mem_mb",
        "total_gpus",
    }
    | {"status"}
)
HISTORY_METRICS = frozenset({"median_queue_s", "median_run_s"})
CARBON_METRICS = frozenset({"carbon_intensity", "price_day_ahead"})  # pulsar_carbon_intensity
# TPV gives rank 2 s: a store locked by a writer (or a slow database) must not take them all.
RANK_BUSY_TIMEOUT_S = 0.5
_UNKNOWN: Mapping[str, None] = MappingProxyType(
    dict.fromkeys(
        (
            "free_cores",
            "free_mem_mb",
            "free_gpus",
            "total_cores",
            "total_mem_mb",
            "total_gpus",
            "max_node_cores",
            "max_node_mem_mb",
            "max_node_gpus",
            "queued_jobs",
            "queued_cores",
            "running_jobs",
            "running_cores",
        )
    )
)
_METRIC_TO_VAL: Mapping[str, str] = MappingProxyType({"queued": "queued_jobs", "running": "running_jobs"})
# How the reasons name a scheduler that gives start estimates (only Slurm's backfill does, so far).
_SCHEDULER_NAMES: Mapping[str, str] = MappingProxyType({"slurm": "Slurm"})


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything read from the store for one request, keyed by destination id."""

    summaries: Mapping[str, DestinationSummary] = field(default_factory=dict)
    tool_times: Mapping[str, ToolTimes] = field(default_factory=dict)
    metrics: Mapping[str, Sequence[MetricRow]] = field(default_factory=dict)
    typical_run_s: Mapping[str, float] = field(default_factory=dict)  # all tools: how fast queues drain
    placements: Mapping[str, Sequence[PlacementEntry]] = field(default_factory=dict)  # in-flight ledger


def open_existing_store(url: str) -> tuple[Store | None, str | None]:
    """Open the store only if it exists already: rank must not create an empty database as a side effect.

    Returns (store, None) or (None, warning). Any failure to open degrades to ranking from the request.
    """
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return (
            None,
            f"state store {path} does not exist yet (run metasched collect): ranking from the request",
        )
    try:
        return Store.open(url, readonly=True, busy_timeout=RANK_BUSY_TIMEOUT_S, connect_timeout=1), None
    except Exception as exc:  # any driver error: rank degrades, it never fails a job over state
        log.debug("opening the store failed", exc_info=True)
        return None, f"state store unreadable ({type(exc).__name__}: {exc}): ranking from the request"


def load_state(
    store: Store, dest_ids: Sequence[str], tool_id: str, ledger_since: datetime | None = None
) -> StoredState:
    """A handful of queries (one per kind of state), whatever the number of destinations.

    ``ledger_since`` (the ledger is on): also the in-flight placements recorded since then, one query.
    """
    summaries = {s.id: s for s in store.summaries(dest_ids)}
    times = store.tool_times(tool_id, dest_ids)
    by_dest: dict[str, list[MetricRow]] = {}
    for row in store.metrics(dest_ids, tool_id):
        by_dest.setdefault(row.destination_id, []).append(row)
    typical = store.typical_run_s(dest_ids)
    placed = {} if ledger_since is None else store.inflight_by_destination(dest_ids, ledger_since)
    return StoredState(
        summaries=summaries, tool_times=times, metrics=by_dest, typical_run_s=typical, placements=placed
    )


Demand = tuple[int, float, float, float]  # in-flight (jobs, cores, memory MB, GPUs)


def inflight_demand(
    entries: Sequence[PlacementEntry], seen_at: datetime | None, job_id: str | None
) -> Demand:
    """(jobs, cores, memory MB, GPUs) of the placements the observation at ``seen_at`` cannot hold
    yet (None: nothing observed, all count), leaving out ``job_id`` itself: a job ranked again is not
    queued ahead of itself.

    A job reaches the scheduler's queue once its inputs are staged (Pulsar stages before it submits),
    so a placement counts until an observation made after its predicted arrival: placed_at plus its
    predicted staging. Collect resolves the ones it then finds; the others expire after the TTL.
    """
    jobs = 0
    cores = mem = gpus = 0.0
    for e in entries:
        if (seen_at is None or e.arrives_at > seen_at) and e.job_id != job_id:
            jobs += 1
            cores += e.cores
            mem += e.mem_mb
            gpus += e.gpus
    return jobs, cores, mem, gpus


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


def _latest(rows: Sequence[MetricRow], tool_id: str) -> dict[str, MetricRow]:
    """Newest row per metric name; a row for this exact tool beats one for another version of it
    (Tool Shed ids differ in their last segment), which beats a destination-wide one."""
    if not rows:
        return {}
    best: dict[str, tuple[int, MetricRow]] = {}
    base = versionless(tool_id)
    for row in rows:
        if not row.tool_id:
            level = 0
        elif row.tool_id == tool_id:
            level = 2
        elif row.tool_id == base or (base != tool_id and versionless(row.tool_id) == base):
            level = 1
        else:
            continue
        cur = best.get(row.name)
        if cur is None or level > cur[0]:
            best[row.name] = (level, row)
            continue
        if level < cur[0]:
            continue
        row_t = row.observed_at or row.fetched_at
        cur_t = cur[1].observed_at or cur[1].fetched_at
        if row_t is not None and (cur_t is None or row_t > cur_t):
            best[row.name] = (level, row)
    return {name: row for name, (_, row) in best.items()}


def _positive(value: float) -> float | None:
    return value if value > 0 else None


def _positive_opt(value: int | None) -> float | None:
    return float(value) if value else None


def observe(
    dest: DestinationRequest,
    summary: DestinationSummary | None,
    history: ToolTimes | None,
    metric_rows: Sequence[MetricRow],
    configured: DestinationConfig | None,
    *,
    tool_id: str,
    now: datetime,
    max_state_age: float,
    max_metric_age: float,
    typical_run_s: float | None = None,
    carbon_max_age: float | None = None,
    placements: Sequence[PlacementEntry] = (),
    job_id: str | None = None,
) -> tuple[Observed, bool, bool]:
    """Merge every source into one ``Observed``; also (state was stale, metrics were stale) for warnings.

    Carbon intensity and price are read only with ``carbon_max_age`` (an energy weight is on): off,
    the answer carries no trace of them. The scheduler's expected starts of pending jobs come with a
    fresh summary only, and not when the request gives its own queue count (it supersedes the stored
    queue they are about); the model keeps those computed within ``max_state_age``.
    """
    reasons: list[str] = []
    usable: bool | None = None
    disabled: str | None = None
    state_stale = False
    estimates: Sequence[StartEstimate] = ()

    if configured is not None and not configured.enabled:
        disabled = "disabled in the config"
    vals: dict[str, float | None]
    if summary is not None:
        if summary.disabled_at(now):
            until = f" until {summary.disabled_until.isoformat()}" if summary.disabled_until else ""
            disabled = f"{summary.disabled_reason}{until}"
        age = _age_s(now, summary.last_success)
        if age is None:
            last = f" (last error: {summary.error})" if summary.error else ""
            reasons.append(f"never collected successfully{last}")
            vals = dict(_UNKNOWN)
        elif age > max_state_age:
            state_stale = True
            reasons.append(f"collected state is stale ({age:,.0f} s old > {max_state_age:,.0f} s): unknown")
            vals = dict(_UNKNOWN)
        else:
            # One dict literal per destination: this runs for every destination of every request.
            nodes = summary.nodes_total > 0
            vals = {
                "free_cores": float(summary.cores_free),
                "free_mem_mb": float(summary.mem_free_mb),
                "free_gpus": float(summary.gpus_free),
                "total_cores": float(summary.cores_total) if nodes else None,
                "total_mem_mb": _positive(float(summary.mem_total_mb)) if nodes else None,
                "total_gpus": float(summary.gpus_total) if nodes else None,
                # None (no node available, or collected before schema v3) and 0 (not reported) say nothing.
                "max_node_cores": _positive_opt(summary.max_node_cores) if nodes else None,
                "max_node_mem_mb": _positive_opt(summary.max_node_mem_mb) if nodes else None,
                "max_node_gpus": _positive_opt(summary.max_node_gpus) if nodes else None,
                "queued_jobs": float(summary.jobs_queued),
                "queued_cores": float(summary.queued_cores),
                "running_jobs": float(summary.jobs_running),
                "running_cores": float(summary.running_cores),
            }
            if nodes:
                usable = summary.nodes_unavailable < summary.nodes_total
            estimates = summary.start_estimates
            failed = "; last collect failed" if not summary.reachable else ""
            reasons.append(
                f"collected {age:,.0f} s ago{failed}: {summary.cores_free}/{summary.cores_total} cores, "
                f"{summary.mem_free_mb / MB_PER_GB:.1f}/{summary.mem_total_mb / MB_PER_GB:.1f} GB, "
                f"{summary.gpus_free}/{summary.gpus_total} GPUs free; {summary.jobs_queued} jobs "
                f"({summary.queued_cores} cores) queued"
            )
    else:
        reasons.append("no collected state")
        vals = dict(_UNKNOWN)

    status: str | None = None
    metric_queue: float | None = None
    metric_run: float | None = None
    metrics_stale: list[str] = []
    used: list[str] = []
    energy: dict[str, float] = {}
    energy_stale: list[str] = []
    for name, row in _latest(metric_rows, tool_id).items() if metric_rows else ():
        if name in HISTORY_METRICS:
            if row.value is not None and row.value >= 0:
                if name == "median_queue_s":
                    metric_queue = row.value
                else:
                    metric_run = row.value
            continue
        if name not in STATE_METRICS:
            if carbon_max_age is not None and name in CARBON_METRICS and row.value is not None:
                age = _age_s(now, row.observed_at or row.fetched_at)
                if age is None or age > carbon_max_age:
                    energy_stale.append(name)
                elif name == "price_day_ahead" or row.value >= 0:  # prices may be negative
                    energy[name] = row.value
            continue
        age = _age_s(now, row.observed_at or row.fetched_at)
        if age is None or age > max_metric_age:
            metrics_stale.append(name)
            continue
        if name == "status":
            status = row.text
            continue
        key = _METRIC_TO_VAL.get(name, name)
        if vals.get(key) is None and row.value is not None and row.value >= 0:
            vals[key] = row.value
            used.append(name)
    if metrics_stale:
        reasons.append(
            f"metrics older than {max_metric_age:,.0f} s ignored: {', '.join(sorted(metrics_stale))}"
        )
    if used:
        reasons.append(f"from metrics: {', '.join(sorted(used))}")
    if energy_stale:
        names = ", ".join(sorted(energy_stale))
        reasons.append(f"older than carbon_max_age_s ({carbon_max_age:,.0f} s), unknown: {names}")

    inline = dest.metrics
    if inline is not NO_METRICS:  # the shared empty one: most destinations carry no inline metrics
        overrides = {
            "queued_jobs": inline.queued,
            "running_jobs": inline.running,
            "free_cores": inline.free_cores,
            "free_mem_mb": inline.free_mem_mb,
            "free_gpus": inline.free_gpus,
            "total_cores": inline.total_cores,
            "total_mem_mb": inline.total_mem_mb,
            "total_gpus": inline.total_gpus,
        }
        given = [k for k, v in overrides.items() if v is not None]
        for key in given:
            vals[key] = overrides[key]
        if inline.queued is not None:
            vals["queued_cores"] = None  # the request's count is newer than the stored cores behind it
            estimates = ()  # and than the stored pending jobs the scheduler's estimates are about
        if inline.running is not None:
            vals["running_cores"] = None
        if given:
            reasons.append(f"from request: {', '.join(given)}")
        if inline.status is not None:
            status = inline.status
        if inline.median_queue_s is not None:
            metric_queue = inline.median_queue_s
        if inline.median_run_s is not None:
            metric_run = inline.median_run_s
        if carbon_max_age is not None:
            if inline.carbon_intensity is not None:
                energy["carbon_intensity"] = inline.carbon_intensity
            if inline.price_day_ahead is not None:
                energy["price_day_ahead"] = inline.price_day_ahead

    counted = history is not None and history.count
    # Positional, in Observed's field order (named in the comments): keyword construction of its
    # 23 fields costs three times as much, for every destination of every request.
    observed = Observed(
        vals["free_cores"],
        vals["free_mem_mb"],
        vals["free_gpus"],
        vals["total_cores"],
        vals["total_mem_mb"],
        vals["total_gpus"],
        vals["max_node_cores"],
        vals["max_node_mem_mb"],
        vals["max_node_gpus"],
        vals["queued_jobs"],
        vals["queued_cores"],
        vals["running_jobs"],
        vals["running_cores"],
        usable,
        status,
        disabled,
        history.median_queue_s if history is not None and counted else None,  # history_queue_s
        history.median_run_s if history is not None and counted else None,  # history_run_s
        history.count if history is not None else 0,  # history_count
        typical_run_s,  # dest_run_s
        metric_queue,  # metric_queue_s
        metric_run,  # metric_run_s
        tuple(reasons),
    )
    if energy:
        observed.carbon_g_kwh = energy.get("carbon_intensity")
        observed.price_eur_mwh = energy.get("price_day_ahead")
    if estimates and summary is not None:  # Slurm's backfill: a floor on the wait (model.queue_time)
        by = _SCHEDULER_NAMES.get(summary.scheduler) or summary.scheduler or "the scheduler"
        observed.estimates = StartEstimates(estimates, now.timestamp(), max_state_age, by)
    if placements:
        observed = add_inflight(observed, dest, summary, placements, job_id)
    return observed, state_stale, bool(metrics_stale)


def observed_at(dest: DestinationRequest, summary: DestinationSummary | None) -> datetime | None:
    """When the state behind a destination's observation was seen: the request's inline metrics' time,
    else the last successful collect (None: never)."""
    inline = dest.metrics
    seen_at = inline.observed_at if inline is not NO_METRICS and inline.observed_at is not None else None
    if seen_at is None and summary is not None:
        seen_at = summary.last_success
    return seen_at


def with_inflight(observed: Observed, demand: Demand) -> Observed:
    """``observed`` plus the in-flight ``demand`` (a new Observed: the one without it may be shared by
    other requests, serve's memo); ``observed`` itself when nothing is in flight."""
    jobs, cores, mem_mb, gpus = demand
    if not jobs:
        return observed
    plural = "s" if jobs != 1 else ""
    why = f"{jobs} job{plural} ({fmt_num(cores)} cores) placed here since the state was observed"
    return msgspec.structs.replace(
        observed,
        reasons=(*observed.reasons, why),
        inflight_jobs=jobs,
        inflight_cores=cores,
        inflight_mem_mb=mem_mb,
        inflight_gpus=gpus,
    )


def add_inflight(
    observed: Observed,
    dest: DestinationRequest,
    summary: DestinationSummary | None,
    placements: Sequence[PlacementEntry],
    job_id: str | None,
) -> Observed:
    """``observed`` plus the ledger's placements that the state it was made from cannot hold yet."""
    return with_inflight(observed, inflight_demand(placements, observed_at(dest, summary), job_id))
