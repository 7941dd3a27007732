"""Options and helpers shared by every command. Nothing heavy is imported here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from metasched.cli.report import report

if TYPE_CHECKING:
    from metasched.settings import Config
    from metasched.store import Store

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="METASCHED_CONFIG",
        help="YAML config (or seed-2 JSON cluster file). Default: $CONFIGURATION_DIRECTORY/config.yml, "
        "/etc/metasched/config.yml, else one local node.",
        show_default=False,
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="METASCHED_DATABASE",
        help="State store: a path, sqlite:///path or postgresql://user@host/db. Overrides the config.",
        show_default=False,
    ),
]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def setup_logging(verbose: int) -> None:
    """Log lines go to stderr, one per event (journald-friendly)."""
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def fail(exc: BaseException, verbose: int = 0) -> NoReturn:
    """End the command with a one-line message on stderr and the documented exit code."""
    raise typer.Exit(report(exc, verbose))


def open_context(config_path: Path | None, database: str | None) -> tuple[Config, Store]:
    """Load the config (explicit, env, systemd, /etc, or the built-in local default) and open its store."""
    import os

    from metasched.settings import database_url, load_config, resolve_config_path
    from metasched.store import Store

    env = dict(os.environ)
    cfg = load_config(resolve_config_path(config_path, env), env)
    return cfg, Store.open(database_url(cfg, database, env))
