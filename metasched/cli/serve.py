"""`metasched serve`."""

from __future__ import annotations

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, VerboseOpt


def serve(config: ConfigOpt = None, database: DatabaseOpt = None, verbose: VerboseOpt = 0) -> None:
    """Not implemented yet."""
    raise typer.Exit(1)
