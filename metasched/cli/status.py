"""`metasched status`: every destination, its capacity, queue and freshness."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from metasched.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    VerboseOpt,
    fail,
    open_context,
    setup_logging,
)

HEADERS = (
    "destination",
    "scheduler",
    "up",
    "age",
    "cores free/total",
    "mem free/total GB",
    "gpus",
    "nodes down",
    "running",
    "queued",
    "error",
)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["id"],
        row["scheduler"],
        "yes" if row["reachable"] else "no",
        _age(row["age_s"]),
        f"{row['cores_free']}/{row['cores_total']}",
        f"{row['mem_free_mb'] / 1024:.1f}/{row['mem_total_mb'] / 1024:.1f}",
        f"{row['gpus_free']}/{row['gpus_total']}",
        f"{row['nodes_unavailable']}/{row['nodes_total']}",
        str(row["jobs_running"]),
        str(row["jobs_queued"]),
        (row["disabled"] and f"disabled: {row['disabled']}") or row["error"] or "",
    ]


def _print_rich(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*HEADERS, title="metasched status")
    for row in rows:
        style = "red" if not row["reachable"] else ("yellow" if row["stale"] else None)
        t.add_row(*_cells(row), style=style)
    Console().print(t)


def status(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Show every destination: reachable, age of the last good collect, capacity, queue, last error."""
    setup_logging(verbose)
    try:
        from metasched.views.status import status_rows

        cfg, store = open_context(config, database)
        with store:
            rows = status_rows(cfg, store.summaries(), datetime.now(UTC))
    except Exception as exc:
        fail(exc, verbose)
    if json_out:
        print(json.dumps(rows, indent=2))
    elif sys.stdout.isatty():
        _print_rich(rows)
    else:
        from metasched.views.text import table

        print(table(HEADERS, [_cells(r) for r in rows]))
