"""`metasched disable DEST` / `metasched enable DEST`: take a destination out of ranking and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, JsonOpt, VerboseOpt, fail, setup_logging

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


def _set(
    dest: str, reason: str | None, until: str | None, config: ConfigOpt, database: DatabaseOpt
) -> dict[str, Any]:
    """Write the change; returns what to print. Unknown destinations are a usage error (exit 2)."""
    import os

    from metasched.config import database_url, load_config, resolve_config_path
    from metasched.errors import InputError
    from metasched.serve.admin import DEFAULT_REASON, AdminStore, parse_until

    env = dict(os.environ)
    cfg = load_config(resolve_config_path(config, env), env, read_secrets=False)
    now = datetime.now(UTC)
    end = parse_until(until, now) if until is not None and reason is not None else None
    text = " ".join(reason.split()) if reason is not None else None
    if reason is not None and not text:
        text = DEFAULT_REASON
    store = AdminStore.open(database_url(cfg, database, env))
    assert isinstance(store, AdminStore)  # Store.open constructs the class it is called on
    try:
        conf = cfg.destination(dest)
        if conf is not None:
            store.ensure_destination(conf.id, conf.scheduler, conf.host)
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
