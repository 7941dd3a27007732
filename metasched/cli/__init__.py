"""The ``metasched`` command line: thin adapters over the core functions.

Each command lives in its own module and imports its heavy dependencies inside the command
function, so ``metasched rank`` never pays for fabric or the web framework.
"""

from __future__ import annotations

import os
import sys

import typer

from metasched.cli import collect, config_cmd, rank, serve, status

app = typer.Typer(
    name="metasched",
    help="Meta-scheduler companion for Galaxy/TPV: collect cluster state, rank destinations, show status.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("collect")(collect.collect)
app.command("status")(status.status)
app.command("rank")(rank.rank)
app.command("serve")(serve.serve)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    # `rank` runs once per Galaxy job: skip Typer's pydantic-based parameter coercion on that path.
    if sys.argv[1:2] == ["rank"]:
        code = rank.fast_path(sys.argv[2:], dict(os.environ))
        if code is not None:
            sys.exit(code)
    app()
