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

from metasched.app.observations import Ages, observe_candidates
from metasched.app.policy_ranking import apply as apply_policies
from metasched.domain.errors import ConfigError, InputError
from metasched.rank.energy import energy_on
from metasched.rank.ledger import job_key, record
from metasched.rank.model import Location, Outcome, Ranked
from metasched.rank.request import RankRequest, parse_request, parse_request_bytes
from metasched.rank.score import rank_candidates
from metasched.settings import Config
from metasched.settings.weights import Weights, make_weights
from metasched.store import Store

__all__ = ["SCHEMA_VERSION", "rank", "rank_outcome", "response"]

SCHEMA_VERSION = 1
DEFAULT_MAX_METRIC_AGE = 900.0
ONE_SECOND = timedelta(seconds=1)
# (destination, tool, second, max ages) -> its observation (app.observations.Seen); DISTANCES ->
# rank_candidates' known distances; see rank_outcome.
Memo = MutableMapping[tuple[Any, ...], Any]
DISTANCES = ("distances",)

log = logging.getLogger(__name__)


def _weights(config: Config, req: RankRequest) -> Weights:
    """The config's weights (a bad one is the config's problem), with the request's on top."""
    try:
        configured = make_weights(("rank.weights", config.rank.weights))
    except InputError as exc:
        where = str(config.path) if config.path is not None else "config"
        raise ConfigError([f"{where}: {exc}"]) from None
    if not req.options.weights:
        return configured
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

    objectstores = {k: Location(lat, lon) for k, (lat, lon) in config.objectstores.items()}
    objectstores.update(req.objectstores)
    carbon_max_age = weights.carbon_max_age_s if energy_on(weights) else None
    seen_at = now if memo is None or not now.microsecond else now.replace(microsecond=0) + ONE_SECOND
    explain = req.options.explain
    seen = observe_candidates(
        req,
        config,
        store,
        seen_at,
        Ages(max_state_age, max_metric_age, carbon_max_age),
        ledger_since=now - timedelta(seconds=config.rank.ledger_ttl) if config.rank.ledger else None,
        job_id=job_key(req),
        memo=memo,
        terms_key=(tuple(req.options.weights.items()), explain) if req.options.weights else explain,
    )
    if seen.unreadable is not None:
        memo = None
        warn.append(seen.unreadable)
    stale_state, stale_metrics, candidates = seen.stale_state, seen.stale_metrics, seen.candidates
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
        outcome, policy_warn = apply_policies(outcome, config, store, seen.summaries, now, max_state_age)
        warn.extend(policy_warn)
    warn.extend(outcome.warnings)
    return outcome, warn


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _entry(rank: int, r: Ranked, explain: bool) -> dict[str, Any]:
    # Every ranked destination's seconds to the nearest thousandth; round(x * 1e3) / 1e3 rather than
    # round(x, 3), which costs twice as much and runs five times per destination (values are finite).
    components: dict[str, Any] = {
        "staging_s": round(r.staging_s * 1e3) / 1e3,
        "queue_s": round(r.queue_s * 1e3) / 1e3,
        "run_s": round(r.run_s * 1e3) / 1e3,
        "total_s": round(r.total_s * 1e3) / 1e3,
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
        "score": round(r.score * 1e3) / 1e3,
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
