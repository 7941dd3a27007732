"""Admin actions as serve offers them: runtime policy changes (``GET``/``PUT /v1/policy``).

Plain functions from (config, store, body) to (status, JSON object), so ``serve/app.py`` only routes.
The bearer token is checked by serve's middleware; a server without a token refuses changes (403),
because an open endpoint that reorders every job's placement is not what an administrator expects.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from metasched.domain.errors import InputError
from metasched.policy import active_policies, describe, recent_actions, set_policy
from metasched.settings import Config
from metasched.store import Store

_FIELDS = ("name", "group", "high_priority")


def show(config: Config, store: Store) -> dict[str, Any]:
    """What ``metasched policy show --json`` prints."""
    return {
        "policies": [describe(p) for p in active_policies(config, store)],
        "recent_actions": recent_actions(store, 20),
    }


def put(config: Config, store: Store, body: bytes, client: str) -> tuple[int, dict[str, Any]]:
    """``{"name": ..., "group": ..., "high_priority": ...}`` -> 200 ``{"old", "new"}``, 422 or 403."""
    if config.serve.token is None:
        return 403, {"detail": "policy changes need a bearer token: set serve.token (or token_file)"}
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 422, {"detail": "request: not JSON"}
    if not isinstance(data, dict):
        return 422, {"detail": "request: must be a JSON object"}
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        return 422, {"detail": f"{unknown[0]}: unknown field (known: {', '.join(_FIELDS)})"}
    for key in _FIELDS:
        if data.get(key) is not None and not isinstance(data[key], str):
            return 422, {"detail": f"{key}: must be a string"}
    if not data.get("name"):
        return 422, {"detail": "name: is required"}
    try:
        old, new = set_policy(
            config,
            store,
            data["name"],
            group=data.get("group"),
            high_priority=data.get("high_priority"),
            by=f"api {client}",
            now=datetime.now(UTC),
        )
    except InputError as exc:
        # set_policy speaks the CLI's words; here they are the body's fields.
        detail = str(exc).replace("--group", "group").replace("--high-priority", "high_priority")
        if detail.startswith("policy: must be"):
            detail = "name" + detail.removeprefix("policy")
        return 422, {"detail": detail}
    return 200, {"old": describe(old), "new": describe(new)}
