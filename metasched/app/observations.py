"""Each candidate of one request as the model sees it: its observation, from the store's state or
from serve's memo, with the ledger's placements in flight there added.

Without a memo (``metasched rank``) every destination is observed from one read of the store. With
one (serve), a destination observed earlier in the same second for the same tool and ages is taken
from the memo and the store is read only for the others: a burst of one tool's jobs reads and
observes each destination once. The placements in flight depend on the job (it is not queued ahead
of itself), so they are added per request; the observation with them is kept by their demand, and
every kept observation carries a place for the model's job-shape terms (``Candidate.terms``).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from metasched.domain.destination import DestinationSummary, PlacementEntry
from metasched.rank.model import Candidate, Location, Observed, Terms, same_terms
from metasched.rank.request import NO_METRICS, DestinationRequest, RankRequest
from metasched.rank.state import (
    Demand,
    StoredState,
    inflight_demand,
    load_state,
    observe,
    observed_at,
    with_inflight,
)
from metasched.settings import Config, DestinationConfig
from metasched.store import Store

__all__ = ["Ages", "Observations", "Seen", "observe_candidates"]

ONE_SECOND = timedelta(seconds=1)
MAX_DEMANDS = 64  # in-flight demands kept per observation; a burst adds one per placement

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ages:
    """How old collected state, cached metrics and energy figures may be (None: energy is off)."""

    state: float
    metrics: float
    carbon: float | None


@dataclass(slots=True)
class Seen:
    """One destination's observation as the memo keeps it, for one tool, second and ``Ages``."""

    observed: Observed
    state_stale: bool
    metrics_stale: bool
    summary: DestinationSummary | None  # placements count from its last collect; policies read it
    terms: dict[Hashable, dict[Any, Terms]] = field(default_factory=dict)  # per (weights, explain)
    inflight: dict[Demand, Seen] = field(default_factory=dict)  # with that demand in flight added
    # The terms of the second before's observations with a demand in flight, when it had the same
    # values as this one (carry_over): those with this demand have them too.
    inherited: dict[Demand, dict[Hashable, dict[Any, Terms]]] = field(default_factory=dict)
    # (entries, their demand for a job not among them, those jobs): serve's cache hands out the same
    # entries object until they change, so most requests of a second reuse the sum.
    placed_demand: tuple[Sequence[PlacementEntry], Demand, frozenset[str]] | None = None

    def demand(
        self, placed: Sequence[PlacementEntry], seen_at: datetime | None, job_id: str | None
    ) -> Demand:
        """``inflight_demand`` of ``placed`` for ``job_id``; the last sum while ``placed`` stays."""
        kept = self.placed_demand
        if kept is None or kept[0] is not placed:
            kept = (placed, inflight_demand(placed, seen_at, None), frozenset(e.job_id for e in placed))
            self.placed_demand = kept
        if job_id is not None and job_id in kept[2]:  # ranked again: not queued ahead of itself
            return inflight_demand(placed, seen_at, job_id)
        return kept[1]

    def plus(self, demand: Demand) -> Seen:
        """This observation with ``demand`` in flight (itself without any), kept for the next job."""
        if not demand[0]:
            return self
        kept = self.inflight.get(demand)
        if kept is None:
            if len(self.inflight) >= MAX_DEMANDS:
                self.inflight.clear()
            observed = with_inflight(self.observed, demand)
            kept = Seen(observed, self.state_stale, self.metrics_stale, self.summary)
            terms = self.inherited.get(demand)
            if terms is not None:
                kept.terms = terms
            self.inflight[demand] = kept
        return kept

    def carry_over(self, before: Seen) -> None:
        """Take the job-shape terms of ``before`` (the same destination and tool a second earlier)
        when its values are this one's: the second moved on, the state did not."""
        if same_terms(self.observed, before.observed):
            self.terms = before.terms
            self.inherited = {demand: seen.terms for demand, seen in before.inflight.items()}


@dataclass(slots=True)
class Observations:
    """The request's candidates, in its order, and what the warnings and policies need."""

    candidates: list[Candidate]
    summaries: dict[str, DestinationSummary]
    stale_state: int = 0
    stale_metrics: int = 0
    unreadable: str | None = None  # why the store could not be read: ranked from the request


def observe_candidates(
    req: RankRequest,
    config: Config,
    store: Store | None,
    now: datetime,
    ages: Ages,
    *,
    ledger_since: datetime | None,
    job_id: str | None,
    memo: MutableMapping[tuple[Any, ...], Any] | None = None,
    terms_key: Hashable = None,
) -> Observations:
    """Every destination of ``req`` observed at ``now``; with a ``memo``, at the end of ``now``'s second
    (the caller passes that), shared with the other requests of that second. ``terms_key`` names the
    weights and explain setting the kept job-shape terms were computed with."""
    tool_id = req.job.tool_id
    keys: list[tuple[Any, ...] | None] = []
    found: list[Seen | None] = []
    missing: list[str] = []
    for dest in req.destinations:
        # Inline metrics are this request's own: never shared with others.
        key = None
        if memo is not None and dest.metrics is NO_METRICS:
            key = (dest.id, tool_id, now, ages.state, ages.metrics, ages.carbon)
        seen = None if key is None else memo.get(key)  # type: ignore[union-attr]
        keys.append(key)
        found.append(seen)
        if seen is None:
            missing.append(dest.id)

    state = StoredState()
    placements: Mapping[str, Sequence[PlacementEntry]] = {}
    unreadable = None
    if store is not None:
        try:
            if missing:
                state = load_state(store, missing, tool_id)
            if ledger_since is not None:
                placements = store.inflight_by_destination([d.id for d in req.destinations], ledger_since)
        except Exception as exc:  # a locked or broken store degrades the answer, it never fails the job
            log.debug("reading the store failed", exc_info=True)
            unreadable = f"state store unreadable ({type(exc).__name__}: {exc}): ranking from the request"
            state, placements, memo = StoredState(), {}, None
            keys, found = [None] * len(keys), [None] * len(found)

    candidates: list[Candidate] = []
    summaries: dict[str, DestinationSummary] = {}
    stale_state = stale_metrics = 0
    configured = {d.id: d for d in config.destinations} if config.destinations else {}
    for dest, key, seen in zip(req.destinations, keys, found, strict=True):
        dest_id = dest.id
        conf = configured.get(dest_id) if configured else None
        placed = placements.get(dest_id) if placements else None
        terms = None
        if seen is None:
            summary = state.summaries.get(dest_id)
            observed, s_stale, m_stale = observe(
                dest,
                summary,
                state.tool_times.get(dest_id),
                state.metrics.get(dest_id, ()),
                conf,
                tool_id=tool_id,
                now=now,
                max_state_age=ages.state,
                max_metric_age=ages.metrics,
                typical_run_s=state.typical_run_s.get(dest_id),
                carbon_max_age=ages.carbon,
                placements=(placed or ()) if key is None else (),
                job_id=job_id,
            )
            if key is not None:
                seen = memo[key] = Seen(observed, s_stale, m_stale, summary)  # type: ignore[index]
                before = memo.get((dest_id, tool_id, now - ONE_SECOND, *key[3:]))  # type: ignore[union-attr]
                if before is not None:
                    seen.carry_over(before)
        else:
            summary = seen.summary
        if seen is not None:
            if placed:
                seen = seen.plus(seen.demand(placed, observed_at(dest, summary), job_id))
            observed, s_stale, m_stale = seen.observed, seen.state_stale, seen.metrics_stale
            terms = seen.terms.get(terms_key)
            if terms is None:
                terms = seen.terms[terms_key] = {}
        if summary is not None:
            summaries[dest_id] = summary
        stale_state += s_stale
        stale_metrics += m_stale
        if conf is None:  # the request says all there is: the common case, no detour
            candidates.append(
                Candidate(
                    dest_id,
                    dest.index,
                    dest.tpv_score,
                    dest.location,
                    dest.object_store_id,
                    dest.max_cores,
                    dest.max_mem_mb,
                    dest.max_gpus,
                    observed,
                    terms,
                )
            )
        else:
            candidates.append(_candidate(dest, conf, observed, terms))
    return Observations(candidates, summaries, stale_state, stale_metrics, unreadable)


def _candidate(
    dest: DestinationRequest,
    conf: DestinationConfig,
    observed: Observed,
    terms: dict[Any, Terms] | None,
) -> Candidate:
    """The request's candidate, with the config's coordinates and object store where it gives none."""
    location = dest.location
    if location is None and conf.latitude is not None and conf.longitude is not None:
        location = Location(conf.latitude, conf.longitude)
    store_id = dest.object_store_id
    if store_id is None:
        store_id = conf.object_store
    return Candidate(  # positional (id, index, tpv_score, location, object_store_id, max_*): hot path
        dest.id,
        dest.index,
        dest.tpv_score,
        location,
        store_id,
        dest.max_cores,
        dest.max_mem_mb,
        dest.max_gpus,
        observed,
        terms,
    )
