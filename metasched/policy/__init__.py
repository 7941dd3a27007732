"""Seed-2 cluster policies over node groups: which one is active, runtime overrides, enforcement records.

A node group is a ``policies:`` entry of the config (destinations sharing the same machines). Its id is
its first destination; any destination of the group names it too (``metasched policy set NAME --group
DEST``). The config gives each group's policy; an administrator may switch it at runtime (``metasched
policy set``, ``PUT /v1/policy``): the override lives in the store's settings, so every ``rank``,
``serve`` and ``enforce`` sees it, and it is audited in the log. See docs/policies.md.

Only the standard library and the config are imported here: ``rank`` resolves policies on its hot path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from msgspec.structs import replace

from metasched.domain.errors import InputError
from metasched.settings import POLICY_NAMES, Config, PolicyConfig
from metasched.store import Store

log = logging.getLogger("metasched.policy")

OVERRIDE_PREFIX = "policy.override."  # + group id: JSON PolicyOverride
ACTIONS_KEY = "policy.actions"  # JSON list of the most recent enforcement actions, newest last
MAX_ACTIONS = 200


@dataclass(frozen=True, slots=True)
class PolicyOverride:
    """A runtime change of one group's policy: who set what when, and what it replaced."""

    name: str
    high_priority: str | None
    by: str
    at: str  # ISO 8601 UTC
    previous: str


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """A group's policy as it is in force now: the config's, with a runtime override applied."""

    group: str
    config: PolicyConfig  # name/high_priority already replaced by the override, if any
    source: str  # "config" or "runtime"
    override: PolicyOverride | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def weight(self, dest_id: str) -> float:
        """The destination's share of the group in percent (see ``weights``)."""
        return weights(self.config).get(dest_id, 0.0)


def group_id(policy: PolicyConfig) -> str:
    return policy.destinations[0]


def weights(policy: PolicyConfig) -> dict[str, float]:
    """Every destination's weight: the configured ones; without any, equal shares; a destination the
    config leaves out gets what the others leave (0 when they sum to 100, as ``config check`` demands)."""
    dests = policy.destinations
    if not policy.weights:
        return dict.fromkeys(dests, 100.0 / len(dests))
    missing = [d for d in dests if d not in policy.weights]
    rest = max(0.0, 100.0 - sum(policy.weights.values()))
    out = {d: float(policy.weights.get(d, 0.0)) for d in dests}
    for d in missing:
        out[d] = rest / len(missing)
    return out


def override_key(group: str) -> str:
    return OVERRIDE_PREFIX + group


def _parse_override(raw: str | None) -> PolicyOverride | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        override = PolicyOverride(
            name=str(data["name"]),
            high_priority=data.get("high_priority"),
            by=str(data.get("by", "")),
            at=str(data.get("at", "")),
            previous=str(data.get("previous", "")),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable runtime policy override: %.200r", raw)
        return None
    return override if override.name in POLICY_NAMES else None


def apply_override(policy: PolicyConfig, override: PolicyOverride | None) -> ActivePolicy:
    group = group_id(policy)
    if override is None:
        return ActivePolicy(group, policy, "config")
    high = override.high_priority if override.high_priority in policy.destinations else policy.high_priority
    if override.name == "best_effort" and high is None:  # cannot be: set_policy refuses it
        return ActivePolicy(group, policy, "config")
    return ActivePolicy(group, replace(policy, name=override.name, high_priority=high), "runtime", override)


def active_policies(config: Config, store: Store | None) -> list[ActivePolicy]:
    """Every configured group with its runtime override (one settings read per group)."""
    out = []
    for policy in config.policies:
        raw = store.get_setting(override_key(group_id(policy))) if store is not None else None
        out.append(apply_override(policy, _parse_override(raw)))
    return out


def find_group(config: Config, group: str | None) -> PolicyConfig:
    """The group named by any of its destinations; without a name, the only group. InputError otherwise."""
    if not config.policies:
        raise InputError("policy: the config defines no policies (node groups)")
    if group is None:
        if len(config.policies) > 1:
            ids = ", ".join(group_id(p) for p in config.policies)
            raise InputError(f"--group: the config has several node groups ({ids}); name one")
        return config.policies[0]
    for policy in config.policies:
        if group in policy.destinations:
            return policy
    raise InputError(f"--group: no node group contains destination {group!r}")


def set_policy(
    config: Config,
    store: Store,
    name: str,
    *,
    group: str | None,
    high_priority: str | None,
    by: str,
    now: datetime,
) -> tuple[ActivePolicy, ActivePolicy]:
    """Switch a group's policy at runtime; returns (old, new). InputError for an invalid change.

    Setting the config's own policy again removes the override, so ``status`` shows "config" again.
    """
    normalized = name.strip().lower().replace("-", "_").replace(" ", "_")
    if normalized not in POLICY_NAMES:
        raise InputError(f"policy: must be one of {', '.join(POLICY_NAMES)}, got {name!r}")
    policy = find_group(config, group)
    gid = group_id(policy)
    if high_priority is not None and high_priority not in policy.destinations:
        raise InputError(f"--high-priority: {high_priority!r} is not a destination of group {gid!r}")
    old = apply_override(policy, _parse_override(store.get_setting(override_key(gid))))
    high = high_priority or old.config.high_priority
    if normalized == "best_effort" and high is None:
        raise InputError("--high-priority: best_effort needs a high-priority destination")
    if normalized == policy.name and high == policy.high_priority:
        store.set_setting(override_key(gid), None)
        new = ActivePolicy(gid, policy, "config")
    else:
        override = PolicyOverride(
            name=normalized,
            high_priority=high,
            by=by,
            at=now.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            previous=old.name,
        )
        store.set_setting(override_key(gid), json.dumps(asdict(override)))
        new = apply_override(policy, override)
    log.warning(
        "policy of group %s changed by %s at %s: %s -> %s (high_priority %s -> %s)",
        gid,
        by,
        now.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        old.name,
        new.name,
        old.config.high_priority,
        new.config.high_priority,
    )
    return old, new


def describe(active: ActivePolicy) -> dict[str, Any]:
    """JSON form for ``policy show``, ``status`` and ``PUT /v1/policy``."""
    p = active.config
    return {
        "group": active.group,
        "name": p.name,
        "source": active.source,
        "destinations": list(p.destinations),
        "high_priority": p.high_priority,
        "weights": weights(p),
        "enforce": p.enforce,
        "nice": p.nice,
        "nodes": list(p.nodes),
        "changed_by": active.override.by if active.override else None,
        "changed_at": active.override.at if active.override else None,
        "previous": active.override.previous if active.override else None,
    }


_SAME_FAILURE = ("destination", "job", "command", "error")


def record_actions(store: Store, actions: Sequence[Mapping[str, Any]]) -> None:
    """Append enforcement actions to the bounded list ``status`` shows (oldest dropped).

    A failure identical to one already kept (e.g. the same permission error after every collect)
    is not added again, so repeated failures cannot push the successful actions out of the list.
    """
    kept = recent_actions(store)
    failures = {tuple(a.get(k) for k in _SAME_FAILURE) for a in kept if not a.get("ok")}
    new = [dict(a) for a in actions if a.get("ok") or tuple(a.get(k) for k in _SAME_FAILURE) not in failures]
    if new:
        store.set_setting(ACTIONS_KEY, json.dumps([*kept, *new][-MAX_ACTIONS:]))


def recent_actions(store: Store, limit: int = MAX_ACTIONS) -> list[dict[str, Any]]:
    raw = store.get_setting(ACTIONS_KEY)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    return [a for a in data if isinstance(a, dict)][-limit:] if isinstance(data, list) else []
