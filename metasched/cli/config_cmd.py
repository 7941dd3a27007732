"""`metasched config ...`."""

from __future__ import annotations

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, VerboseOpt

app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)


@app.command("check")
def check(config: ConfigOpt = None, database: DatabaseOpt = None, verbose: VerboseOpt = 0) -> None:
    """Not implemented yet."""
    raise typer.Exit(1)
