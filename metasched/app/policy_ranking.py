"""Ranking with policies: the active cluster policies adjust a rank outcome, in seconds of expected
turnaround (docs/policies.md). It joins the policy state (``metasched.policy``) and the model's outcome
(``metasched.rank``), siblings that know nothing of each other, so it lives in the app layer.

``adjust`` is pure: the model's ``Outcome``, the active policies and each destination's running work
in, a re-ordered ``Outcome`` out. ``apply`` is the hook ``rank`` calls: it reads the overrides and the
state of group members the request did not name, then calls ``adjust``.

- exclusive: a member with nothing running is infeasible while another member has jobs running.
- best_effort: the feasible high-priority member is ranked ahead of every other member.
- shared: effective turnaround = score x mean_weight / weight (weight 0: infeasible).
- dynamic: shared, times used_share / weight_share of the group's running cores, bounded to
  [DYNAMIC_MIN, DYNAMIC_MAX].
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from metasched.domain.destination import DestinationSummary
from metasched.policy import ActivePolicy, active_policies, weights
from metasched.rank.model import Outcome, Ranked
from metasched.rank.score import order
from metasched.settings import Config
from metasched.store import Store

log = logging.getLogger("metasched.policy")

DYNAMIC_MIN = 0.5  # a member using none of the group's cores runs at most twice as "fast"
DYNAMIC_MAX = 2.0  # one using far more than its share looks at most twice as slow


@dataclass(frozen=True, slots=True)
class Usage:
    """Running work of one destination from its fresh collected state."""

    jobs: int
    cores: int


def _fmt_s(x: float) -> str:
    return f"{x:,.0f} s"


def _scale(r: Ranked, factor: float, why: str) -> Ranked:
    new_score = r.score * factor
    delta = new_score - r.score
    sign = "+" if delta >= 0 else "-"
    reason = f"{why}: effective turnaround x{factor:.2f} = {_fmt_s(new_score)} ({sign}{_fmt_s(abs(delta))})"
    return replace(r, score=new_score, reasons=(*r.reasons, reason))


def _infeasible(r: Ranked, reason: str) -> Ranked:
    return replace(r, feasible=False, reasons=(reason, *r.reasons))


def _dynamic_factor(policy: ActivePolicy, dest: str, usage: Mapping[str, Usage | None]) -> tuple[float, str]:
    members = policy.config.destinations
    known = [usage.get(d) for d in members]
    if any(u is None for u in known):
        return 1.0, "group usage unknown (no fresh state for every member)"
    total = sum(u.cores for u in known if u is not None)
    if total <= 0:
        return 1.0, "no cores in use in the group"
    own = usage[dest]
    used = (own.cores if own is not None else 0) / total
    target = policy.weight(dest) / 100.0
    factor = max(DYNAMIC_MIN, min(DYNAMIC_MAX, used / target))
    return factor, f"uses {used:.0%} of the group's {total} running cores, weight {target:.0%}"


def adjust(outcome: Outcome, policies: Sequence[ActivePolicy], usage: Mapping[str, Usage | None]) -> Outcome:
    """Apply every group's policy to its members in ``outcome``; others pass through unchanged.

    ``usage`` maps destination ids to running work (None: unknown/stale). Order afterwards: feasible
    first, by adjusted score, TPV score, input order (as the model), then each best_effort group's
    high-priority member moved ahead of its fellow members.
    """
    by_id = {r.id: r for r in outcome.ranked}
    for policy in policies:
        members = [d for d in policy.config.destinations if d in by_id]
        if not members:
            continue
        name = policy.name
        if name == "exclusive":
            busy = [d for d in policy.config.destinations if (u := usage.get(d)) is not None and u.jobs > 0]
            for d in members:
                others = [b for b in busy if b != d]
                if others and d not in busy:
                    by_id[d] = _infeasible(by_id[d], f"exclusive: nodes busy with {', '.join(others)}")
        elif name in ("shared", "dynamic"):
            w = weights(policy.config)
            mean = 100.0 / len(w)
            for d in members:
                weight = w.get(d, 0.0)
                if weight <= 0:
                    by_id[d] = _infeasible(by_id[d], f"{name}: weight 0 in group {policy.group}")
                    continue
                factor = mean / weight
                why = f"{name}: weight {weight:g} of 100 (group mean {mean:.3g})"
                if name == "dynamic":
                    dyn, dyn_why = _dynamic_factor(policy, d, usage)
                    factor *= dyn
                    why = f"{why}; {dyn_why} (x{dyn:.2f})"
                by_id[d] = _scale(by_id[d], factor, why)
    ranked = sorted(by_id.values(), key=lambda r: order(r.feasible, r.score, r.tpv_score, r.index))
    for policy in policies:
        if policy.name == "best_effort":
            ranked = _best_effort(ranked, policy)
    return Outcome(ranked=tuple(ranked), warnings=outcome.warnings)


def _best_effort(ranked: list[Ranked], policy: ActivePolicy) -> list[Ranked]:
    high = policy.config.high_priority
    members = set(policy.config.destinations)
    pos = {r.id: i for i, r in enumerate(ranked)}
    if high is None or high not in pos or not ranked[pos[high]].feasible:
        return ranked
    ahead = [r for r in ranked[: pos[high]] if r.id in members]
    hp = ranked[pos[high]]
    if not ahead:
        return [
            replace(r, reasons=(*r.reasons, "best_effort: high-priority destination of its group"))
            if r.id == high
            else r
            for r in ranked
        ]
    first = pos[ahead[0].id]
    gain = hp.score - ahead[0].score
    hp = replace(
        hp,
        reasons=(
            *hp.reasons,
            f"best_effort: high priority, ranked ahead of {', '.join(r.id for r in ahead)} "
            f"despite {_fmt_s(gain)} more effective turnaround",
        ),
    )
    rest = [r for r in ranked if r.id != high]
    out = [*rest[:first], hp, *rest[first:]]
    return [
        replace(r, reasons=(*r.reasons, f"best_effort: {high} has priority on the shared nodes"))
        if r.id in members and r.id != high
        else r
        for r in out
    ]


def usage_from(
    summaries: Mapping[str, DestinationSummary], now: datetime, max_state_age: float
) -> dict[str, Usage | None]:
    """Running work per destination from fresh summaries; stale or never-collected ones are None."""
    out: dict[str, Usage | None] = {}
    for dest_id, s in summaries.items():
        fresh = s.last_success is not None and (now - s.last_success).total_seconds() <= max_state_age
        out[dest_id] = Usage(s.jobs_running, s.running_cores) if fresh else None
    return out


def apply(
    outcome: Outcome,
    config: Config,
    store: Store | None,
    summaries: Mapping[str, DestinationSummary],
    now: datetime,
    max_state_age: float,
) -> tuple[Outcome, list[str]]:
    """The rank hook: active policies (with runtime overrides) applied; a store problem is a warning."""
    warnings: list[str] = []
    policies: list[ActivePolicy]
    known = dict(summaries)
    try:
        policies = active_policies(config, store)
        members = [d for p in config.policies for d in p.destinations if d not in known]
        if store is not None and members:
            known.update({s.id: s for s in store.summaries(members)})
    except Exception as exc:  # the store is a hint: configured policies still apply
        log.debug("reading policy state failed", exc_info=True)
        warnings.append(f"policy state unreadable ({type(exc).__name__}: {exc}): config policies only")
        policies = active_policies(config, None)
    return adjust(outcome, policies, usage_from(known, now, max_state_age)), warnings
