"""`metasched rank`: JSON request on stdin (or --request FILE), JSON answer on stdout, nothing else there.

Only light modules are imported here and in metasched.rank: TPV waits for this command on every job.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, VerboseOpt, fail, setup_logging

RequestOpt = Annotated[
    Path | None,
    typer.Option(
        "--request",
        "-r",
        help="Read the request from this JSON file instead of stdin.",
        show_default=False,
        dir_okay=False,
    ),
]
ExplainOpt = Annotated[
    bool,
    typer.Option(
        "--explain", help="Also write a table of every destination's components and reasons to stderr."
    ),
]


def _read_request(path: Path | None) -> bytes:
    from metasched.errors import InputError
    from metasched.rank.request import MAX_REQUEST_BYTES

    if path is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("request: none given (pipe JSON on stdin or use --request FILE)")
        return sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise InputError(f"--request {path}: {exc.strerror or exc}") from None


def _cell(text: str) -> str:
    """Ids and reasons may hold quotes or newlines: escape them so each row stays one line."""
    return text.encode("unicode_escape").decode("ascii")


def explain_table(result: dict[str, Any]) -> str:
    """Plain-text table (no rich: it costs more to import than the whole ranking)."""
    head = f"{'rank':>4}  {'feasible':<8} {'staging_s':>12} {'queue_s':>12} {'run_s':>12} {'total_s':>12} "
    head += f"{'tpv':>6} {'score':>12}  id"
    lines = [head]
    for r in result["ranked"]:
        c = r["components"]
        lines.append(
            f"{r['rank']:>4}  {'yes' if r['feasible'] else 'NO':<8} {c['staging_s']:>12,.1f} "
            f"{c['queue_s']:>12,.1f} {c['run_s']:>12,.1f} {c['total_s']:>12,.1f} {c['tpv_score']:>6g} "
            f"{r['score']:>12,.1f}  {_cell(r['id'])}"
        )
        lines.extend(f"{'':>6}- {_cell(reason)}" for reason in r["reasons"])
    lines.extend(f"warning: {_cell(w)}" for w in result["warnings"])
    return "\n".join(lines) + "\n"


def run(request: Path | None, explain: bool, config: Path | None, database: str | None, verbose: int) -> None:
    """The command body, shared by the Typer command and the fast path."""
    import json
    import os
    from datetime import UTC, datetime

    setup_logging(verbose)
    try:
        from metasched.config import database_url, load_config, resolve_config_path
        from metasched.rank import rank as rank_request
        from metasched.rank.request import decode_request
        from metasched.rank.state import open_existing_store

        request_obj = decode_request(_read_request(request))
        env = dict(os.environ)
        cfg = load_config(resolve_config_path(config, env), env, read_secrets=False)
        store, warning = open_existing_store(database_url(cfg, database, env))
        try:
            result = rank_request(request_obj, cfg, store, datetime.now(UTC), [warning] if warning else [])
        finally:
            if store is not None:
                store.close()
        text = json.dumps(result, allow_nan=False) + "\n"
    except Exception as exc:
        fail(exc, verbose)
    if explain:
        sys.stderr.write(explain_table(result))
    sys.stdout.write(text)


def rank(
    request: RequestOpt = None,
    explain: ExplainOpt = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Rank TPV candidate destinations for one job by expected turnaround (see docs/rank.md).

    Exit 0 with JSON on stdout; 2 for an invalid request or config (one line on stderr, nothing on
    stdout); 1 for an internal error.
    """
    run(request, explain, config, database, verbose)


_VALUED: Mapping[str, str] = MappingProxyType(
    {"--request": "request", "-r": "request", "--config": "config", "-c": "config", "--database": "database"}
)


def fast_path(argv: list[str], env: dict[str, str]) -> int | None:
    """Run ``metasched rank ARGS`` without Typer's parameter machinery, or None to let Typer handle it.

    Typer coerces every parameter through pydantic, whose import alone costs about half of a bare
    ``import typer, peewee, yaml``; TPV waits for this command on every job. Only the exact options
    of ``rank`` above are accepted here; anything else (--help, typos) goes to Typer, so usage
    errors and help text have one source.
    """
    values: dict[str, str] = {}
    explain = False
    verbose = 0
    args = iter(argv)
    for arg in args:
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _VALUED:
            value = inline if eq else next(args, None)
            if not value or (not eq and value.startswith("-")):
                return None
            values[_VALUED[name]] = value
        elif arg == "--explain":
            explain = True
        elif arg == "--verbose" or (len(arg) > 1 and arg[0] == "-" and arg[1:] == "v" * (len(arg) - 1)):
            verbose += 1 if arg == "--verbose" else len(arg) - 1
        else:
            return None
    config = values.get("config") or env.get("METASCHED_CONFIG") or None
    database = values.get("database") or env.get("METASCHED_DATABASE") or None
    request = values.get("request")
    try:
        run(
            Path(request) if request is not None else None,
            explain,
            Path(config) if config is not None else None,
            database,
            verbose,
        )
    except typer.Exit as exc:
        return exc.exit_code
    return 0
