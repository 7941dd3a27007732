"""The ranking service: one TPV request -> ranked destinations by expected turnaround seconds.

``rank()`` is the one entry point for the CLI and ``serve``: it validates the request, reads the store
(if any) in a few queries, runs the pure model, applies the cluster policies, records the answer in the
placement ledger and returns the response object. See docs/rank.md.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from metasched.app.policy_ranking import apply as apply_policies
from metasched.domain.errors import ConfigError, InputError
from metasched.rank.energy import energy_on
from metasched.rank.ledger import job_key, record
from metasched.rank.model import Candidate, Location, Outcome, Ranked
from metasched.rank.request import NO_METRICS, RankRequest, parse_request, parse_request_bytes
from metasched.rank.score import rank_candidates
from metasched.rank.state import StoredState, add_inflight, load_state, observe
from metasched.settings import Config
from metasched.settings.weights import Weights, make_weights
from metasched.store import Store

__all__ = ["SCHEMA_VERSION", "rank", "rank_outcome", "response"]

SCHEMA_VERSION = 1
DEFAULT_MAX_METRIC_AGE = 900.0
ONE_SECOND = timedelta(seconds=1)
# (destination, tool, second, max ages) -> observe()'s answer; DISTANCES -> rank_candidates' known
# distances; see rank_outcome.
Memo = MutableMapping[tuple[Any, ...], Any]
DISTANCES = ("distances",)

log = logging.getLogger(__name__)


def _weights(config: Config, req: RankRequest) -> Weights:
    try:
        make_weights(("rank.weights", config.rank.weights))
    except InputError as exc:
        where = str(config.path) if config.path is not None else "config"
        raise ConfigError([f"{where}: {exc}"]) from None
    return make_weights(("rank.weights", config.rank.weights), ("options.weights", req.options.weights))


def rank_outcome(
    req: RankRequest,
    config: Config,
    store: Store | None,
    now: datetime,
    warnings: Sequence[str] = (),
    memo: Memo | None = None,
) -> tuple[Outcome, list[str]]:
    """The model's ordered result plus every warning (request, store, staleness, model).

    ``memo`` (serve): each destination's observation kept across requests while the store's reads and
    the config stay the same. Ages are then taken at the whole second, so every request of that second
    sees the same observation: a burst of one tool's jobs observes each destination once. The second's
    end, not its start: a state collected a moment ago is never dated in the future.
    """
    weights = _weights(config, req)
    warn = [*warnings, *req.warnings]
    max_state_age = req.options.max_state_age
    if max_state_age is None:
        max_state_age = config.rank.max_state_age
    max_metric_age = req.options.max_metric_age
    if max_metric_age is None:
        max_metric_age = config.influxdb.max_age if config.influxdb is not None else DEFAULT_MAX_METRIC_AGE

    ids = [d.id for d in req.destinations]
    state = StoredState()
    if store is not None:
        try:
            since = now - timedelta(seconds=config.rank.ledger_ttl) if config.rank.ledger else None
            state = load_state(store, ids, req.job.tool_id, since)
        except Exception as exc:  # a locked or broken store degrades the answer, it never fails the job
            log.debug("reading the store failed", exc_info=True)
            memo = None
            warn.append(f"state store unreadable ({type(exc).__name__}: {exc}): ranking from the request")

    objectstores = {k: Location(lat, lon) for k, (lat, lon) in config.objectstores.items()}
    objectstores.update(req.objectstores)
    stale_state = stale_metrics = 0
    candidates: list[Candidate] = []
    configured = {d.id: d for d in config.destinations}
    summaries, tool_times, metrics, typical = (
        state.summaries,
        state.tool_times,
        state.metrics,
        state.typical_run_s,
    )
    tool_id = req.job.tool_id
    placements, job_id = state.placements, job_key(req)
    carbon_max_age = weights.carbon_max_age_s if energy_on(weights) else None
    seen_at = now if memo is None or not now.microsecond else now.replace(microsecond=0) + ONE_SECOND
    for dest in req.destinations:
        conf = configured.get(dest.id)
        placed = placements.get(dest.id, ())
        # Inline metrics are this request's own: not shared with others. In-flight placements are
        # added to the shared observation (they depend on the job: it is not queued ahead of itself).
        shared = memo if dest.metrics is NO_METRICS else None
        seen = None
        if shared is not None:
            key = (dest.id, tool_id, seen_at, max_state_age, max_metric_age, carbon_max_age)
            seen = shared.get(key)
        if seen is None:
            seen = observe(
                dest,
                summaries.get(dest.id),
                tool_times.get(dest.id),
                metrics.get(dest.id, ()),
                conf,
                tool_id=tool_id,
                now=seen_at,
                max_state_age=max_state_age,
                max_metric_age=max_metric_age,
                typical_run_s=typical.get(dest.id),
                carbon_max_age=carbon_max_age,
                placements=() if shared is not None else placed,
                job_id=job_id,
            )
            if shared is not None:
                shared[key] = seen
        observed, s_stale, m_stale = seen
        if placed and shared is not None:
            observed = add_inflight(observed, dest, summaries.get(dest.id), placed, job_id)
        stale_state += s_stale
        stale_metrics += m_stale
        location = dest.location
        if location is None and conf is not None and conf.latitude is not None and conf.longitude is not None:
            location = Location(conf.latitude, conf.longitude)
        store_id = dest.object_store_id
        if store_id is None and conf is not None:
            store_id = conf.object_store
        candidates.append(  # positional (id, index, tpv_score, location, object_store_id, max_*): hot path
            Candidate(
                dest.id,
                dest.index,
                dest.tpv_score,
                location,
                store_id,
                dest.max_cores,
                dest.max_mem_mb,
                dest.max_gpus,
                observed,
            )
        )
    if stale_state:
        warn.append(
            f"collected state older than {max_state_age:,.0f} s for {stale_state} destination(s): "
            "is metasched collect running?"
        )
    if stale_metrics:
        warn.append(
            f"cached metrics older than {max_metric_age:,.0f} s for {stale_metrics} destination(s): "
            "is InfluxDB reachable?"
        )
    known = None if memo is None else memo.setdefault(DISTANCES, {})
    outcome = rank_candidates(
        req.job, req.datasets, objectstores, candidates, weights, req.options.explain, known
    )
    if config.policies:  # seed-2 node groups (docs/policies.md)
        outcome, policy_warn = apply_policies(outcome, config, store, state.summaries, now, max_state_age)
        warn.extend(policy_warn)
    warn.extend(outcome.warnings)
    return outcome, warn


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _entry(rank: int, r: Ranked, explain: bool) -> dict[str, Any]:
    components: dict[str, Any] = {
        "staging_s": round(r.staging_s, 3),
        "queue_s": round(r.queue_s, 3),
        "run_s": round(r.run_s, 3),
        "total_s": round(r.total_s, 3),
        "tpv_score": r.tpv_score,
        "staged_bytes": r.staged_bytes,
        "local_bytes": r.local_bytes,
    }
    e = r.energy
    if e is not None:  # an energy weight is on: the estimate behind carbon_s/price_s
        components["energy_kwh"] = round(e.kwh, 6)
        if e.carbon_s is not None:
            components["carbon_g_per_kwh"] = e.carbon_g_kwh
            components["co2_g"] = _round(e.co2_g, 3)
            components["carbon_s"] = round(e.carbon_s, 3)
        if e.price_s is not None:
            components["price_eur_per_mwh"] = e.price_eur_mwh
            components["price_eur"] = _round(e.price_eur, 6)
            components["price_s"] = round(e.price_s, 3)
    entry = {
        "id": r.id,
        "rank": rank,
        "score": round(r.score, 3),
        "feasible": r.feasible,
        "components": components,
    }
    if explain:
        entry["reasons"] = list(r.reasons)
    return entry


def response(
    outcome: Outcome, warnings: Sequence[str], *, drop_infeasible: bool = False, explain: bool = True
) -> dict[str, Any]:
    """The JSON response (metasched/schemas/rank-response.json); entries without ``reasons`` unless
    ``explain``."""
    order = [r.id for r in outcome.ranked if r.feasible or not drop_infeasible]
    warn = list(warnings)
    dropped = len(outcome.ranked) - len(order)
    if dropped:
        warn.append(f"{dropped} infeasible destination(s) left out of sorted_destinations (drop_infeasible)")
    return {
        "schema_version": SCHEMA_VERSION,
        "sorted_destinations": order,
        "ranked": [_entry(i, r, explain) for i, r in enumerate(outcome.ranked, start=1)],
        "warnings": warn,
    }


def rank(
    request_obj: object,
    config: Config,
    store: Store | None,
    now: datetime,
    warnings: Sequence[str] = (),
    notes: list[str] | None = None,
    memo: Memo | None = None,
) -> dict[str, Any]:
    """Validate ``request_obj`` (decoded JSON; the raw bytes, decoded and validated in one pass; or a
    RankRequest already parsed) and
    rank it; InputError/ConfigError for bad input or config.

    ``store`` None ranks from the request and the config alone; ``warnings`` (e.g. why there is no
    store) are carried into the response. The answer is recorded in the placement ledger
    (``metasched.rank.ledger``); ``notes`` receives what happened to it (``--explain`` shows it).
    """
    if isinstance(request_obj, RankRequest):
        req = request_obj
    elif isinstance(request_obj, bytes):
        req = parse_request_bytes(request_obj)
    else:
        req = parse_request(request_obj)
    outcome, warn = rank_outcome(req, config, store, now, warnings, memo)
    note = record(req, outcome, config, store, now, warn)
    if notes is not None:
        notes.append(note)
    return response(outcome, warn, drop_infeasible=req.options.drop_infeasible, explain=req.options.explain)
