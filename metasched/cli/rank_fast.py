"""`metasched rank` without Typer: TPV waits for this command on every job it maps.

Typer's own import plus its pydantic-based parameter coercion cost more than the whole ranking, so
``metasched.cli.main`` hands ``rank`` argv here first. Only the exact options of the Typer command
(metasched/cli/rank.py) are accepted; anything else (``--help``, typos) returns None and Typer
handles it, so help text and usage errors have one source. Exit codes and error lines match
``metasched.cli.common.fail``.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec

from metasched.app.ranking import rank
from metasched.cli.report import report
from metasched.domain.errors import InputError
from metasched.rank.request import MAX_REQUEST_BYTES, parse_request_bytes
from metasched.rank.state import open_existing_store
from metasched.settings import database_url, load_config, resolve_config_path

_VALUED: Mapping[str, str] = MappingProxyType(
    {"--request": "request", "-r": "request", "--config": "config", "-c": "config", "--database": "database"}
)


def _read_request(path: Path | None) -> bytes:
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


# Energy components, shown as columns only when an energy weight put them in the answer.
_ENERGY_COLUMNS = (("co2_g", 1), ("carbon_s", 1), ("price_eur", 4), ("price_s", 1))


def _energy_cell(value: object, digits: int) -> str:
    """``?``: this destination's figure is unknown (null)."""
    return f"{value:>10,.{digits}f}" if isinstance(value, int | float) else f"{'?':>10}"


def explain_table(result: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """Plain-text table of every destination's components and reasons (no rich: too slow to import),
    then ``notes`` (what rank did besides answering: the placement ledger) and the warnings."""
    extra = [(k, d) for k, d in _ENERGY_COLUMNS if any(k in r["components"] for r in result["ranked"])]
    head = f"{'rank':>4}  {'feasible':<8} {'staging_s':>12} {'queue_s':>12} {'run_s':>12} {'total_s':>12} "
    head += "".join(f"{k:>10} " for k, _ in extra)
    head += f"{'tpv':>6} {'score':>12}  id"
    lines = [head]
    for r in result["ranked"]:
        c = r["components"]
        energy = "".join(f"{_energy_cell(c.get(k), d)} " for k, d in extra)
        lines.append(
            f"{r['rank']:>4}  {'yes' if r['feasible'] else 'NO':<8} {c['staging_s']:>12,.1f} "
            f"{c['queue_s']:>12,.1f} {c['run_s']:>12,.1f} {c['total_s']:>12,.1f} "
            f"{energy}{c['tpv_score']:>6g} {r['score']:>12,.1f}  {_cell(r['id'])}"
        )
        lines.extend(f"{'':>6}- {_cell(reason)}" for reason in r.get("reasons", ()))
    lines.extend(f"note: {_cell(n)}" for n in notes)
    lines.extend(f"warning: {_cell(w)}" for w in result["warnings"])
    return "\n".join(lines) + "\n"


def run(
    request: Path | None,
    explain: bool,
    config: Path | None,
    database: str | None,
    verbose: int,
    env: Mapping[str, str],
) -> int:
    """The whole command: read, rank, print. Returns the exit code; stdout stays empty unless it is 0."""
    if verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
        logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        req = parse_request_bytes(_read_request(request))  # before the config: a bad request names itself
        asked = req.options.explain
        if explain and not asked:  # the table shows the reasons; stdout still answers as asked
            req = msgspec.structs.replace(req, options=msgspec.structs.replace(req.options, explain=True))
        cfg = load_config(resolve_config_path(config, env), env, read_secrets=False)
        store, warning = open_existing_store(database_url(cfg, database, env))
        notes: list[str] = []
        try:
            result = rank(req, cfg, store, datetime.now(UTC), [warning] if warning else [], notes)
        finally:
            if store is not None:
                store.close()
        answer = result
        if not asked:
            answer = {
                **result,
                "ranked": [{k: v for k, v in r.items() if k != "reasons"} for r in result["ranked"]],
            }
        text = json.dumps(answer, allow_nan=False) + "\n"
    except Exception as exc:
        return report(exc, verbose)
    if explain:
        sys.stderr.write(explain_table(result, notes))
    sys.stdout.write(text)
    return 0


def fast_main(argv: list[str], env: Mapping[str, str]) -> int | None:
    """Run ``metasched rank ARGV`` and return its exit code, or None to let Typer handle ``argv``.

    Only for a process that exits right after: it turns the cyclic garbage collector off, whose passes
    over the many small objects of a large request cost more than they free.
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
        elif arg == "--verbose":
            verbose += 1
        elif len(arg) > 1 and arg == "-" + "v" * (len(arg) - 1):
            verbose += len(arg) - 1
        else:
            return None
    config = values.get("config") or env.get("METASCHED_CONFIG") or None
    database = values.get("database") or env.get("METASCHED_DATABASE") or None
    request = values.get("request")
    gc.disable()
    return run(
        Path(request) if request is not None else None,
        explain,
        Path(config) if config is not None else None,
        database,
        verbose,
        env,
    )
