"""Scoring: every candidate's terms added up and the candidates ordered (the formula in rank.model)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, MutableMapping, Sequence
from operator import itemgetter

from metasched.rank.energy import energy_cost, energy_on, median_known
from metasched.rank.model import (
    MAX_SECONDS,
    Candidate,
    Dataset,
    Distances,
    Energy,
    JobSpec,
    Location,
    Outcome,
    Ranked,
    group_inputs,
    infeasibility,
    known_run_s,
    neutral_staging,
    run_time,
    sources,
    staging,
    status_note,
    store_points,
)
from metasched.rank.start_estimate import queue_time
from metasched.settings.weights import Weights

KNOWN_SOURCES = 64  # sets of input locations whose distances are kept (rank_candidates' measured)
KNOWN_LOCATIONS = 4096  # destination locations per set
KNOWN_SHAPES = 256  # job shapes per observation (Candidate.terms)


def order(feasible: bool, score: float, tpv_score: float, index: int) -> tuple[bool, int, float, int]:
    """Where a destination ranks: feasible first, then by score (equal to the millionth is a tie),
    then higher TPV score, then the request's order."""
    return (not feasible, round(score * 1e6), -tpv_score, index)


def rank_candidates(
    job: JobSpec,
    datasets: Sequence[Dataset],
    objectstores: Mapping[str, Location],
    candidates: Sequence[Candidate],
    w: Weights,
    explain: bool = True,
    measured: MutableMapping[tuple[object, ...], Distances] | None = None,
) -> Outcome:
    """Score every candidate and order them: feasible first, by score, then TPV score, then input order.

    Without ``explain`` no reason is written (every ``Ranked.reasons`` is empty): formatting them is
    a large part of a rank, and TPV's hooks only read the order. ``measured`` keeps each destination's
    distances to the sources of a request by those sources' locations, for the next request. A
    candidate's ``terms`` keep what its observation gives a job of this shape, computed once (the
    caller keeps one per weights and ``explain``)."""
    warnings: list[str] = []
    missing = sorted(
        {ds.object_store_id for ds in datasets if ds.object_store_id is not None} - set(objectstores)
    )
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        warnings.append(f"object store(s) without a known location: {shown}")
    groups = group_inputs(datasets)
    runs = [known_run_s(c.observed, w) for c in candidates]
    known = [r for r in runs if r is not None]
    tool_median = statistics.median(known) if known else None
    srcs = sources(groups, objectstores)
    stores = store_points(objectstores) if any(src is None for _, src in srcs) else []
    seen = None
    if measured is not None:  # bounded: sources and locations come from requests
        if len(measured) >= KNOWN_SOURCES:
            measured.clear()
        seen = measured.setdefault(tuple(p for _, p in srcs), {})
        if len(seen) >= KNOWN_LOCATIONS:
            seen.clear()
    stagings = [staging(srcs, cand, w, stores, explain, seen) for cand in candidates]
    located: list[float] | None = None  # the located ones' staging: needed only for one without
    total_bytes = sum(g.size_bytes for g in groups)
    scored: list[tuple[tuple[bool, int, float, int], Ranked]] = []
    discount, tpv_weight, tanh = w.tpv_max_discount, w.tpv_weight, math.tanh
    with_energy = energy_on(w)
    carbon_mid = median_known([c.observed.carbon_g_kwh for c in candidates]) if with_energy else None
    price_mid = median_known([c.observed.price_eur_mwh for c in candidates]) if with_energy else None
    cores, mem_mb, gpus = job.cores, job.mem_mb, job.gpus
    fallback_run_s = tool_median if tool_median is not None else w.default_run_s
    for cand, (stage_s, moved, local, stage_why), own_run_s in zip(candidates, stagings, runs, strict=True):
        obs = cand.observed
        kept = cand.terms
        shape = (cores, mem_mb, gpus, cand.max_cores, cand.max_mem_mb, cand.max_gpus)
        terms = None if kept is None else kept.get(shape)
        if terms is None:
            queue_s, queue_list = queue_time(job, obs, w, explain)
            terms = (tuple(infeasibility(job, cand)), queue_s, tuple(queue_list))
            if kept is not None:
                if len(kept) >= KNOWN_SHAPES:
                    kept.clear()
                kept[shape] = terms
        why_not, queue_s, queue_why = terms
        if cand.location is None and moved > 0:
            if located is None:
                located = [
                    st[0] for c, st in zip(candidates, stagings, strict=True) if c.location is not None
                ]
            stage_s, neutral_why = neutral_staging(moved, total_bytes, located)
            if explain:
                stage_why.insert(0, neutral_why)
        if explain:
            run_s, run_why = run_time(cand, tool_median, w)
        else:  # run_time's value without its reason: the destination's own, else the fallback
            run_s, run_why = (own_run_s if own_run_s is not None else fallback_run_s), ""
        if stage_s > MAX_SECONDS:
            stage_s = MAX_SECONDS
        if queue_s > MAX_SECONDS:
            queue_s = MAX_SECONDS
        if run_s > MAX_SECONDS:
            run_s = MAX_SECONDS
        total = stage_s + queue_s + run_s
        energy: Energy | None = None
        if with_energy:
            energy, energy_why = energy_cost(job, run_s, obs, carbon_mid, price_mid, w)
            cost = total + energy.seconds
            reasons = (
                (*why_not, *obs.reasons, *stage_why, *queue_why, run_why, *energy_why) if explain else ()
            )
        else:
            cost = total
            reasons = (*why_not, *obs.reasons, *stage_why, *queue_why, run_why) if explain else ()
        score = cost * (1.0 - discount * tanh(tpv_weight * cand.tpv_score))
        note = None if obs.status is None or not explain else status_note(obs.status)
        if note is not None:
            reasons = (note, *reasons)
        # Positional: keyword construction of a 12-field dataclass costs noticeably per destination.
        ranked = Ranked(
            cand.id,
            cand.index,
            not why_not,
            score,
            stage_s,
            queue_s,
            run_s,
            total,
            cand.tpv_score,
            moved,
            local,
            reasons,
            energy,
        )
        # order()'s key, inline: this loop runs per destination.
        scored.append(((bool(why_not), round(score * 1e6), -cand.tpv_score, cand.index), ranked))
    scored.sort(key=itemgetter(0))
    return Outcome(ranked=tuple(t[1] for t in scored), warnings=tuple(warnings))
