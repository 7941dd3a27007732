"""`metasched disable DEST` / `metasched enable DEST`: take a destination out of ranking and back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, JsonOpt, VerboseOpt, fail, setup_logging
from metasched.domain.errors import InputError

DestArg = Annotated[
    str, typer.Argument(help="Destination id (as in the config and TPV).", show_default=False)
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="End of the disable: a duration (30m, 2h, 1d) or an ISO 8601 time (UTC unless it has a zone). "
        "Default: until `metasched enable`.",
        show_default=False,
    ),
]
ReasonOpt = Annotated[
    str | None,
    typer.Option("--reason", help="Why; shown in status and in rank's reasons.", show_default=False),
]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_REASON = "disabled by an operator"


def parse_until(text: str, now: datetime) -> datetime:
    """``--until``: a duration from now (``90m``, ``2h``, ``1d12h``) or an ISO 8601 time (UTC unless it
    names a zone). Raises InputError naming the option."""
    value = text.strip()
    if value and _DURATION.sub("", value).strip() == "":
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(value))
        if seconds <= 0:
            raise InputError(f"--until: {text!r} is not in the future")
        return now + timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise InputError(
            f"--until: {text!r} is neither a duration (30m, 2h, 1d) nor an ISO 8601 time (2026-12-24T08:00Z)"
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= now:
        raise InputError(f"--until: {when.isoformat()} is not in the future")
    return when


def _set(
    dest: str, reason: str | None, until: str | None, config: ConfigOpt, database: DatabaseOpt
) -> dict[str, Any]:
    """Write the change; returns what to print. Unknown destinations are a usage error (exit 2)."""
    import os

    from metasched.settings import database_url, load_config, resolve_config_path
    from metasched.store import Store

    env = dict(os.environ)
    cfg = load_config(resolve_config_path(config, env), env, read_secrets=False)
    now = datetime.now(UTC)
    end = parse_until(until, now) if until is not None and reason is not None else None
    text = " ".join(reason.split()) if reason is not None else None
    if reason is not None and not text:
        text = DEFAULT_REASON
    store = Store.open(database_url(cfg, database, env))
    try:
        conf = cfg.destination(dest)
        if conf is not None:  # configured but not collected yet: it can be disabled before its first collect
            store.sync_destinations([(conf.id, conf.scheduler, conf.host)])
        if not store.set_disabled(dest, text, end):
            raise InputError(f"destination: no destination {dest!r} in the config or the store")
    finally:
        store.close()
    return {
        "id": dest,
        "disabled": text,
        "disabled_until": end.isoformat().replace("+00:00", "Z") if end else None,
    }


def disable(
    destination: DestArg,
    until: UntilOpt = None,
    reason: ReasonOpt = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Disable DESTINATION: rank marks it infeasible with the reason until `enable` or --until passes.

    Collecting goes on, so its state is fresh when it comes back. Exit 0 done, 2 unknown destination
    or bad --until.
    """
    setup_logging(verbose)
    try:
        result = _set(destination, reason or "", until, config, database)
    except Exception as exc:
        fail(exc, verbose)
    _report(result, json_out)


def enable(
    destination: DestArg,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Enable DESTINATION again after `metasched disable` (a no-op when it is not disabled)."""
    setup_logging(verbose)
    try:
        result = _set(destination, None, None, config, database)
    except Exception as exc:
        fail(exc, verbose)
    _report(result, json_out)


def _report(data: dict[str, Any], json_out: bool) -> None:
    if json_out:
        import json

        print(json.dumps(data))
    elif data["disabled"] is None:
        print(f"{data['id']}: enabled")
    else:
        until = f" until {data['disabled_until']}" if data["disabled_until"] else " until enabled"
        print(f"{data['id']}: disabled{until} ({data['disabled']})")
