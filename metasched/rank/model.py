"""The turnaround model: plain values in, plain values out. No I/O, no clock, no database.

Every factor is expressed in seconds of the job's expected turnaround at a destination, so the
factors add up without arbitrary weights between unlike units::

    total_s = staging_s + queue_s + run_s
    score   = (total_s + carbon_s + price_s) * (1 - tpv_max_discount * tanh(tpv_weight * tpv_score))

where carbon_s and price_s, the job's energy priced in seconds, are 0 unless their weights are set.

The formulas, defaults and a worked example are in docs/rank.md. This module holds the types and
the staging, run-time and state-based queue terms; the scheduler's start estimates
(``rank.start_estimate``), the energy terms (``rank.energy``) and the scoring of every candidate
(``rank.score``) build on it.

The per-request types are msgspec Structs: built in C, they cost a fraction of a dataclass to create
(per destination per request) and to define (``metasched rank`` starts in a fresh process each
time). ``Weights`` (``asdict``) and ``Ranked`` (``dataclasses.replace`` by the policies) stay
dataclasses; ``Ranked`` is not ``frozen``: frozen dataclasses set every field through
``object.__setattr__``, a noticeable part of ranking 1,000 destinations.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from metasched.rank.geo import distance_km, point
from metasched.settings.weights import Weights

MB_PER_GB = 1024.0  # job memory is in GB (TPV, Galaxy), stores report MB (MiB): converted once, at parse time
DOWN_STATUSES = frozenset({"offline", "drained", "disabled", "maintenance", "down"})
UP_STATUSES = frozenset({"online", "up", "ok"})
MAX_SECONDS = 1e12  # ~30,000 years: any component beyond this is "never", kept finite for JSON


class Location(Struct, frozen=True):
    latitude: float
    longitude: float


class JobSpec(Struct, frozen=True):
    tool_id: str
    cores: float = 1.0
    mem_mb: float = 0.0
    gpus: float = 0.0


class Dataset(Struct, frozen=True):
    id: str
    object_store_id: str | None
    size_bytes: float


# (cores, mem_mb, gpus, start, estimated_at): one pending job's expected start and when the scheduler
# computed it, epoch seconds (metasched.store.start_estimates.StartEstimate has this layout).
Estimate = tuple[int, int, int, float, float]


class StartEstimates(Struct):
    """The scheduler's expected starts of a destination's pending jobs (Slurm's backfill), as stored:
    the non-dominated ones, latest start first. ``now`` and ``max_age_s`` make them waits and say
    which are fresh, so the model stays free of clocks. Not frozen, like ``Observed``: built per
    destination per request."""

    entries: Sequence[Estimate]
    now: float  # epoch seconds of the request
    max_age_s: float  # estimates computed longer ago are ignored (max_state_age)
    by: str = "the scheduler"  # who computed them, for the reasons ("Slurm")


class Observed(Struct):
    """What is known about a destination right now, merged from the request, the store and metrics.

    ``None`` means unknown (never "free"). Memory in MB. ``reasons`` explain where values came from
    or why they are missing.
    """

    free_cores: float | None = None
    free_mem_mb: float | None = None
    free_gpus: float | None = None
    total_cores: float | None = None
    total_mem_mb: float | None = None
    total_gpus: float | None = None
    max_node_cores: float | None = None  # largest available node: a job runs on one node
    max_node_mem_mb: float | None = None
    max_node_gpus: float | None = None
    queued_jobs: float | None = None
    queued_cores: float | None = None
    running_jobs: float | None = None
    running_cores: float | None = None
    usable: bool | None = None  # False: every node is down/drained
    status: str | None = None  # "online" / "offline" (metrics or request)
    disabled: str | None = None  # operator disable reason, when in force
    history_queue_s: float | None = None  # metasched's own finished jobs of this tool here
    history_run_s: float | None = None
    history_count: int = 0
    dest_run_s: float | None = None  # median run time of every recent job here: how fast its queue drains
    metric_queue_s: float | None = None  # InfluxDB (gxadmin) medians of this tool here
    metric_run_s: float | None = None
    reasons: tuple[str, ...] = ()
    # Set after construction, and only when an energy weight is on (state.observe): fresh figures only.
    carbon_g_kwh: float | None = None  # grid carbon intensity, gCO2/kWh
    price_eur_mwh: float | None = None  # day-ahead electricity price, EUR/MWh (may be negative)
    # Placements rank recorded here since the state was observed (state.observe): queued ahead of the job.
    inflight_jobs: int = 0
    inflight_cores: float = 0.0
    inflight_mem_mb: float = 0.0
    inflight_gpus: float = 0.0
    # The scheduler's expected starts of pending jobs (state.observe): a floor on the wait of a job
    # no smaller than one of them. None where the scheduler gives none or the state is not fresh.
    estimates: StartEstimates | None = None


# What a job of one shape gets from an observation, whatever its inputs: (why it cannot run there,
# queue seconds, why that queue): rank_candidates' part of the work a memo may keep.
Terms = tuple[tuple[str, ...], float, tuple[str, ...]]


def same_terms(a: Observed, b: Observed) -> bool:
    """Whether every job gets the same Terms from ``a`` as from ``b``: all values equal, whatever
    their reasons say. Start estimates are judged at their own time, so neither may have any."""
    return a.estimates is None and b.estimates is None and msgspec.structs.replace(a, reasons=b.reasons) == b


class Candidate(Struct):
    id: str
    index: int  # position in the request: the last tie-breaker
    tpv_score: float = 0.0
    location: Location | None = None
    object_store_id: str | None = None  # datasets in this object store need no staging
    max_cores: float | None = None  # TPV max_accepted_*; memory in MB
    max_mem_mb: float | None = None
    max_gpus: float | None = None
    observed: Observed = msgspec.field(default_factory=Observed)
    # The job-shape terms computed from ``observed`` before, by shape (rank_candidates): serve keeps
    # one per shared observation, so a burst of one tool's jobs computes them once per destination.
    terms: MutableMapping[Any, Terms] | None = None


@dataclass(slots=True)
class Ranked:
    """One destination's estimate; its rank is its position in ``Outcome.ranked`` (1-based)."""

    id: str
    index: int
    feasible: bool
    score: float
    staging_s: float
    queue_s: float
    run_s: float
    total_s: float
    tpv_score: float
    staged_bytes: float
    local_bytes: float
    reasons: tuple[str, ...]
    energy: Energy | None = None  # only when carbon_s_per_kg or price_s_per_eur is > 0


class Outcome(Struct, frozen=True):
    ranked: tuple[Ranked, ...]  # best first: feasible ones, then infeasible ones
    warnings: tuple[str, ...]


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_num(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def normal_status(raw: str) -> str:
    """Case-insensitive, without the literal quotes some InfluxDB sources keep in string fields."""
    return raw.strip().strip("\"'").strip().lower()


def status_note(raw: str | None) -> str | None:
    """A reason for a status that is neither a known up nor a known down one (still feasible)."""
    if raw is None:
        return None
    status = normal_status(raw)
    if status in UP_STATUSES or status in DOWN_STATUSES:
        return None
    return f"unknown status {raw.strip()!r}: treated as up"


def infeasibility(job: JobSpec, cand: Candidate) -> list[str]:
    """Why this destination cannot run the job at all (empty: it can)."""
    out: list[str] = []
    obs = cand.observed
    if cand.max_cores is not None and job.cores > cand.max_cores:
        out.append(f"needs {fmt_num(job.cores)} cores > max_accepted_cores {fmt_num(cand.max_cores)}")
    if cand.max_mem_mb is not None and job.mem_mb > cand.max_mem_mb:
        limit = fmt_num(cand.max_mem_mb / MB_PER_GB)
        out.append(f"needs {fmt_num(job.mem_mb / MB_PER_GB)} GB > max_accepted_mem {limit}")
    if cand.max_gpus is not None and job.gpus > cand.max_gpus:
        out.append(f"needs {fmt_num(job.gpus)} GPUs > max_accepted_gpus {fmt_num(cand.max_gpus)}")
    if obs.disabled is not None:
        out.append(f"disabled: {obs.disabled}")
    if obs.status is not None:
        status = normal_status(obs.status)
        if status in DOWN_STATUSES:
            out.append(f"status {status}")
    if obs.usable is False:
        out.append("no usable node (all down or drained)")
        return out
    # Totals first (a destination without any GPU says so); else the largest node, as the job runs on one.
    if obs.total_cores is not None and job.cores > obs.total_cores:
        out.append(f"needs {fmt_num(job.cores)} cores > {fmt_num(obs.total_cores)} cores in service")
    elif obs.max_node_cores is not None and job.cores > obs.max_node_cores:
        out.append(f"needs {fmt_num(job.cores)} cores, largest node has {fmt_num(obs.max_node_cores)}")
    if obs.total_mem_mb is not None and job.mem_mb > obs.total_mem_mb:
        have = obs.total_mem_mb / MB_PER_GB
        out.append(f"needs {fmt_num(job.mem_mb / MB_PER_GB)} GB > {have:.1f} GB in service")
    elif obs.max_node_mem_mb is not None and job.mem_mb > obs.max_node_mem_mb:
        have = obs.max_node_mem_mb / MB_PER_GB
        out.append(f"needs {fmt_num(job.mem_mb / MB_PER_GB)} GB, largest node has {have:.1f} GB")
    if job.gpus > 0 and obs.total_gpus is not None and job.gpus > obs.total_gpus:
        out.append(f"needs {fmt_num(job.gpus)} GPUs > {fmt_num(obs.total_gpus)} GPUs in service")
    elif job.gpus > 0 and obs.max_node_gpus is not None and job.gpus > obs.max_node_gpus:
        out.append(f"needs {fmt_num(job.gpus)} GPUs, largest node has {fmt_num(obs.max_node_gpus)}")
    return out


class InputGroup(Struct, frozen=True):
    """Every input dataset of one object store (None: unknown store), summed: transfer time is linear
    in bytes, so one distance per (store, destination) is enough however many datasets there are."""

    object_store_id: str | None
    size_bytes: float
    count: int


def group_inputs(datasets: Sequence[Dataset]) -> tuple[InputGroup, ...]:
    sizes: dict[str | None, list[float]] = {}
    for ds in datasets:
        if ds.size_bytes > 0:
            acc = sizes.setdefault(ds.object_store_id, [0.0, 0])
            acc[0] += ds.size_bytes
            acc[1] += 1
    return tuple(InputGroup(k, v[0], int(v[1])) for k, v in sizes.items())


# An input group with its object store's prepared location (None: unknown), once per request.
Source = tuple[InputGroup, tuple[float, float, float] | None]


def sources(groups: Sequence[InputGroup], objectstores: Mapping[str, Location]) -> list[Source]:
    """Each group with its store's location prepared for ``distance_km`` (done once, not per destination)."""
    out: list[Source] = []
    for group in groups:
        src = objectstores.get(group.object_store_id) if group.object_store_id is not None else None
        out.append((group, None if src is None else point(src.latitude, src.longitude)))
    return out


# Every object store whose location is known, prepared once per request: where a dataset of unknown
# location may be.
Stores = Sequence[tuple[str, tuple[float, float, float]]]


def store_points(objectstores: Mapping[str, Location]) -> list[tuple[str, tuple[float, float, float]]]:
    """Every located object store, prepared for ``distance_km`` once per request."""
    return [(k, point(v.latitude, v.longitude)) for k, v in objectstores.items()]


def unknown_factor(stores: Stores, own: str | None, here: tuple[float, float, float], w: Weights) -> float:
    """Staging seconds per (bytes / bandwidth) of a dataset whose object store is unknown.

    It is at one of the known object stores, each as likely: the mean over them of the distance law's
    slowdown ``1 + km / halving_km``, 0 for the destination's own or a co-located one. A destination
    far from every store thus pays more for it than one in their midst. Without any known store, the
    law at ``unknown_distance_km``.
    """
    if not stores:
        return 1.0 + w.unknown_distance_km / w.halving_km
    total = 0.0
    for store_id, p in stores:
        if store_id == own:
            continue
        km = distance_km(p, here)
        if km > w.colocated_km:
            total += 1.0 + km / w.halving_km
    return total / len(stores)


# Each located destination's distance to every source of a request, in the sources' order (None: the
# source's location is unknown), by the destination's location: what ``staging`` measures once.
Distances = MutableMapping[Location, tuple[float | None, ...]]


def distances(srcs: Sequence[Source], here: tuple[float, float, float]) -> tuple[float | None, ...]:
    return tuple(None if src is None else distance_km(src, here) for _, src in srcs)


def staging(
    srcs: Sequence[Source],
    cand: Candidate,
    w: Weights,
    stores: Stores = (),
    explain: bool = True,
    known: Distances | None = None,
) -> tuple[float, float, float, list[str]]:
    """(seconds, bytes to move, bytes already local, reasons) to bring every input to ``cand``;
    no reasons unless ``explain``. ``known``: distances measured before for the same ``srcs``
    (locations do not move, so serve keeps them across requests)."""
    seconds = 0.0
    moved = 0.0
    local = 0.0
    far_km = 0.0
    assumed = 0
    loc = cand.location
    kms: tuple[float | None, ...] = ()
    if loc is not None:
        found = None if known is None else known.get(loc)
        if found is None:
            here = point(loc.latitude, loc.longitude)
            found = distances(srcs, here)
            if known is not None:
                known[loc] = found
        kms = found
    own = cand.object_store_id
    colocated_km, halving_km = w.colocated_km, w.halving_km
    unknown: float | None = None  # unknown_factor, computed on the first dataset of unknown location
    bytes_s = w.bandwidth_mb_s * 1e6  # geo.transfer_s inlined, same arithmetic: this loop runs per pair
    for i, (group, _) in enumerate(srcs):
        if group.object_store_id is not None and group.object_store_id == own:
            local += group.size_bytes
            continue
        if loc is None:  # priced afterwards, neutrally, by ``neutral_staging``
            moved += group.size_bytes
            continue
        km = kms[i]
        if km is None:
            assumed += group.count
            if unknown is None:
                unknown = unknown_factor(stores, own, point(loc.latitude, loc.longitude), w)
            moved += group.size_bytes
            seconds += group.size_bytes / bytes_s * unknown
            continue
        if km <= colocated_km:
            local += group.size_bytes
            continue
        if km > far_km:
            far_km = km
        moved += group.size_bytes
        seconds += group.size_bytes / (bytes_s / (1.0 + (km if km > 0.0 else 0.0) / halving_km))
    reasons: list[str] = []
    if not explain:
        return seconds, moved, local, reasons
    if moved and loc is not None:
        reasons.append(f"stage {fmt_bytes(moved)} (farthest {far_km:,.0f} km): {seconds:,.0f} s")
    if local:
        reasons.append(f"{fmt_bytes(local)} already local (own or co-located object store)")
    if assumed:
        where = (
            f"equally likely at each of the {len(stores)} known object stores"
            if stores
            else f"assumed {w.unknown_distance_km:,.0f} km"
        )
        reasons.append(f"{assumed} dataset(s) of unknown location: {where}")
    return seconds, moved, local, reasons


def neutral_staging(moved: float, total_bytes: float, located: Sequence[float]) -> tuple[float, str]:
    """Staging of a destination without coordinates: neither rewarded nor punished for it.

    Its non-local bytes cost what staging costs at the median destination that has coordinates
    (pro rata); if none has any, staging is not compared at all (0 s for every such destination).
    """
    if not located:
        return 0.0, f"no coordinates (nor any candidate's): staging of {fmt_bytes(moved)} not compared, 0 s"
    mid = statistics.median(located)
    seconds = mid * moved / total_bytes if total_bytes > 0 else 0.0
    return seconds, (
        f"no coordinates: stage {fmt_bytes(moved)} at the median cost of the {len(located)} "
        f"destination(s) with coordinates: {seconds:,.0f} s"
    )


def run_time(cand: Candidate, tool_median: float | None, w: Weights) -> tuple[float, str]:
    """This tool's median run time here (``known_run_s``), else across destinations, else the
    default, and why; never infinite. Unexplained ranks take the value alone (rank_candidates)."""
    obs = cand.observed
    if obs.history_run_s is not None and obs.history_count >= w.min_history:
        return obs.history_run_s, f"run {obs.history_run_s:,.0f} s: median of {obs.history_count} own jobs"
    if obs.metric_run_s is not None:
        return obs.metric_run_s, f"run {obs.metric_run_s:,.0f} s: metrics median"
    if obs.history_run_s is not None:
        return obs.history_run_s, f"run {obs.history_run_s:,.0f} s: median of {obs.history_count} own jobs"
    if tool_median is not None:
        return tool_median, f"run {tool_median:,.0f} s: median of other destinations"
    return w.default_run_s, f"run {w.default_run_s:,.0f} s: default (no history for this tool)"


def known_run_s(obs: Observed, w: Weights) -> float | None:
    """The run time this destination itself knows, with the same precedence as ``run_time``."""
    if obs.history_run_s is not None and obs.history_count >= w.min_history:
        return obs.history_run_s
    if obs.metric_run_s is not None:
        return obs.metric_run_s
    return obs.history_run_s


def state_wait(job: JobSpec, obs: Observed, w: Weights, explain: bool = True) -> tuple[float | None, str]:
    """Queue wait from the current state, or (None, "") when there is none; why ("" unless ``explain``).

    Pending jobs ahead (FIFO/priority) take free cores first: the job starts at once only when it
    fits in what they leave. Otherwise it waits for ``deficit`` cores (queued cores + its own - free
    ones) to be released by running work. With running jobs at random points of runs of typical
    length ``T`` (the destination's median run time over all its jobs, else ``queued_job_s``), the
    k-th of ``capacity`` cores frees after ``k * T / (capacity + 1)`` on average: half a typical run
    for the one core of a full one-core destination, ``queued work / capacity`` for a deep backlog.
    """
    if (
        obs.free_cores is None
        and obs.queued_cores is None
        and obs.queued_jobs is None
        and obs.free_mem_mb is None
        and obs.free_gpus is None
        and not obs.inflight_jobs
    ):
        return None, ""
    typical = obs.dest_run_s if obs.dest_run_s is not None else w.queued_job_s
    queued = obs.queued_cores
    if queued is None and obs.queued_jobs is not None:
        queued = obs.queued_jobs * w.queued_job_cores
    if obs.inflight_jobs:  # placed here after the state was observed: queued ahead, unseen by it
        queued = (queued or 0.0) + obs.inflight_cores
    capacity = obs.total_cores or obs.running_cores
    if not capacity and obs.running_jobs:
        capacity = obs.running_jobs * w.queued_job_cores
    if not capacity and obs.free_cores:
        capacity = obs.free_cores
    cap_why = ""
    if not capacity:
        capacity = max(job.cores, 1.0)
        cap_why = ", capacity unknown: assumed one job at a time"
    capacity = max(capacity, 1.0)  # fractional "capacity" from odd metrics must not blow up the ratio
    ahead = queued or 0.0
    free = obs.free_cores
    if free is None:
        # No free count: a non-empty queue means the cores are taken; an empty one means start now.
        deficit = ahead + job.cores if ahead > 0 else 0.0
    else:
        deficit = max(0.0, ahead + job.cores - free)
    waits = [deficit * typical / (capacity + 1.0)] if deficit > 0 else []
    shorts: list[str] = []
    if deficit > 0 and explain:
        shorts.append(f"{fmt_num(deficit)} cores to free")
    free_mem, free_gpus = obs.free_mem_mb, obs.free_gpus
    if obs.inflight_jobs:  # the placements' memory and GPUs are taken before this job's
        free_mem = None if free_mem is None else free_mem - obs.inflight_mem_mb
        free_gpus = None if free_gpus is None else free_gpus - obs.inflight_gpus
    for need, have, total, what in (
        (job.mem_mb, free_mem, obs.total_mem_mb, "memory"),
        (job.gpus, free_gpus, obs.total_gpus, "GPUs"),
    ):
        if need <= 0 or have is None or have >= need:
            continue
        shorts.append(f"short of {what}")
        if total:
            waits.append((need - have) / total * typical * capacity / (capacity + 1.0))
        else:
            waits.append(typical / 2)  # cannot size it: one running job must end first
    if not explain:
        return w.dispatch_s + max(max(waits), 0.0) if waits else w.dispatch_s, ""
    queue_why = "queue length unknown" if queued is None else f"{fmt_num(ahead)} queued cores ahead"
    free_why = "free cores unknown" if free is None else f"{fmt_num(free)} free"
    where = f"{queue_why}, {free_why} on {fmt_num(capacity)} cores{cap_why}"
    if not waits:
        return w.dispatch_s, f"fits in free resources now, after the queued work ({where})"
    wait = max(waits)
    seconds = w.dispatch_s + max(wait, 0.0)
    t_why = (
        f"typical job here {typical:,.0f} s"
        if obs.dest_run_s is not None
        else f"typical job {typical:,.0f} s (default)"
    )
    return seconds, f"waits for running work: {', '.join(shorts)} ({where}; {t_why})"


def model_queue(job: JobSpec, obs: Observed, w: Weights, explain: bool = True) -> tuple[float, str]:
    """The state-based wait blended with history, and why (the text after "queue N s: "; "" unless
    ``explain``): the queue time before the scheduler's own start estimates (``rank.start_estimate``)
    may raise it."""
    state_s, why = state_wait(job, obs, w, explain)
    hist_why = ""
    if obs.history_queue_s is not None and (obs.history_count >= w.min_history or obs.metric_queue_s is None):
        hist: float | None = obs.history_queue_s
        if explain:
            hist_why = f"own median queue {obs.history_queue_s:,.0f} s ({obs.history_count} jobs)"
    elif obs.metric_queue_s is not None:
        hist = obs.metric_queue_s
        if explain:
            hist_why = f"metrics median queue {obs.metric_queue_s:,.0f} s"
    else:
        hist = None
    if state_s is not None and hist is not None:
        h = w.history_weight
        return (1 - h) * state_s + h * hist, f"{why}; blended with {hist_why}" if explain else ""
    if state_s is not None:
        return state_s, why
    if hist is not None:
        return hist, f"no current state; {hist_why}" if explain else ""
    return w.unknown_queue_s, "unknown (no current state or history)" if explain else ""


class Energy(Struct, frozen=True):
    """A job's estimated electricity at one destination and what it costs in seconds of turnaround.

    ``co2_g``/``price_eur`` are None when this destination's figure is unknown: its seconds are then
    charged at the candidates' median figure, so not reporting is neither rewarded nor punished.
    """

    kwh: float
    carbon_g_kwh: float | None
    co2_g: float | None
    carbon_s: float | None  # None: carbon_s_per_kg is 0
    price_eur_mwh: float | None
    price_eur: float | None
    price_s: float | None  # None: price_s_per_eur is 0

    @property
    def seconds(self) -> float:
        """What the energy adds to the turnaround the score is computed from."""
        return (self.carbon_s or 0.0) + (self.price_s or 0.0)
