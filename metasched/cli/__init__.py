"""The ``metasched`` command line: thin adapters over the core functions.

Each command lives in its own module and imports its heavy dependencies inside the command
function, so ``metasched rank`` never pays for fabric or the web framework. ``rank`` runs once per
Galaxy job, so ``main()`` sends it to ``metasched.rank.main`` before Typer is even imported
(Typer's import and its pydantic-based option coercion would otherwise double its cost).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer


def build_app() -> typer.Typer:
    """The Typer application with every command registered."""
    import typer

    from metasched.cli import admin, collect, config_cmd, policy, rank, serve, status

    app = typer.Typer(
        name="metasched",
        help="Meta-scheduler companion for Galaxy/TPV: collect cluster state, rank destinations, "
        "show status.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.command("collect")(collect.collect)
    app.command("status")(status.status)
    app.command("rank")(rank.rank)
    app.command("serve")(serve.serve)
    app.command("disable")(admin.disable)
    app.command("enable")(admin.enable)
    app.add_typer(config_cmd.app, name="config")
    app.add_typer(policy.app, name="policy")
    app.command("enforce")(policy.enforce)
    return app


def __getattr__(name: str) -> Any:
    """``from metasched.cli import app`` keeps working; the app is built on access."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    if sys.argv[1:2] == ["rank"]:
        from metasched.rank.main import fast_main

        code = fast_main(sys.argv[2:], os.environ)
        if code is not None:
            sys.exit(code)
    build_app()()
