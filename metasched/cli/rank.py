"""`metasched rank`: the Typer face of metasched.cli.rank_fast (which ``main()`` calls directly for speed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, VerboseOpt

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
    typer.Option("--explain", help="Also write every destination's components and reasons to stderr."),
]


def rank(
    request: RequestOpt = None,
    explain: ExplainOpt = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Rank TPV candidate destinations for one job by expected turnaround (see docs/rank.md).

    Reads one JSON request on stdin (or --request FILE) and writes the ranking as JSON on stdout.
    Exit 0 (also when degraded: see "warnings"); 2 for an invalid request or config (one line on
    stderr, nothing on stdout); 1 for an internal error.
    """
    from metasched.cli.rank_fast import run

    code = run(request, explain, config, database, verbose, os.environ)
    if code:
        raise typer.Exit(code)
