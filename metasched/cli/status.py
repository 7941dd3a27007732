"""`metasched status [DEST]`: every destination (or one, with its nodes and partitions), its capacity,
queue and freshness. Rich table on a terminal, aligned plain text when piped, JSON with --json."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from metasched.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    VerboseOpt,
    fail,
    open_context,
    setup_logging,
)
from metasched.domain.errors import InputError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from metasched.settings import Config
    from metasched.store import Store

HEADERS = (
    "destination",
    "scheduler",
    "up",
    "age",
    "cores free/total",
    "mem free/total GB",
    "gpus",
    "nodes unavail",
    "running",
    "queued",
    "median queue",
    "in flight",
    "pred err q/run",
    "error",
)
NODE_HEADERS = (
    "node",
    "state",
    "avail",
    "cores alloc/total",
    "mem free/total GB",
    "gpus",
    "load",
    "partitions",
)
PARTITION_HEADERS = ("partition", "default", "state", "avail", "nodes", "cores", "limits")

DestArg = Annotated[
    str | None,
    typer.Argument(help="Show this destination's nodes and partitions.", show_default=False),
]
WatchOpt = Annotated[
    float | None,
    typer.Option(
        "--watch",
        "-w",
        min=0.1,
        help="Refresh every SECONDS until Ctrl-C (in place on a terminal; a new table each time when piped).",
        show_default=False,
    ),
]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _note(row: dict[str, Any]) -> str:
    policy = row.get("policy")
    note = _state_note(row)
    if policy:  # seed-2 node group (docs/policies.md)
        runtime = ", runtime" if policy["source"] == "runtime" else ""
        note = f"{note}; " if note else ""
        note = f"{note}policy {policy['name']} ({policy['group']}{runtime})"
    enforced = _enforced(row.get("last_enforced"))
    return f"{note}; {enforced}" if note and enforced else note or enforced


def _enforced(action: dict[str, Any] | None) -> str:
    """The latest renice of this destination's jobs, so the plain table shows what enforcement did."""
    if not action:
        return ""
    try:
        at = datetime.fromisoformat(str(action.get("at"))).astimezone(UTC)
    except ValueError:
        return ""
    when = at.strftime("%H:%M UTC" if at.date() == datetime.now(UTC).date() else "%Y-%m-%d %H:%M UTC")
    pids = action.get("pids") or []
    if action.get("ok"):
        return f"reniced {len(pids)} proc{'s' if len(pids) != 1 else ''} to {action.get('nice')} at {when}"
    reason = str(action.get("error") or "").rpartition(": ")[2]
    return f"renice to {action.get('nice')} FAILED at {when}: {reason}"


def _state_note(row: dict[str, Any]) -> str:
    if row["disabled"]:
        until = f" (until {row['disabled_until']})" if row["disabled_until"] else ""
        return f"disabled: {row['disabled']}{until}"
    if row["configured"] and not row["enabled"]:
        return "not collected (enabled: false)"
    return row["error"] or ""


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["id"],
        row["scheduler"],
        "yes" if row["reachable"] else "no",
        _age(row["age_s"]) + (" STALE" if row["stale"] and row["age_s"] is not None else ""),
        f"{row['cores_free']}/{row['cores_total']}",
        f"{row['mem_free_mb'] / 1024:.1f}/{row['mem_total_mb'] / 1024:.1f}",
        f"{row['gpus_free']}/{row['gpus_total']}",
        f"{row['nodes_unavailable']}/{row['nodes_total']}",
        str(row["jobs_running"]),
        str(row["jobs_queued"]),
        _age(row["median_queue_s"]) if row["median_queue_s"] is not None else "-",
        _inflight(row["ledger"]),
        _errors(row["ledger"]),
        _note(row),
    ]


def _inflight(ledger: dict[str, Any]) -> str:
    """Placements not seen at any destination yet (cores), and expired ones when there are any."""
    text = f"{ledger['inflight']} ({ledger['inflight_cores']:g}c)" if ledger["inflight"] else "0"
    return f"{text}, {ledger['expired']} expired" if ledger["expired"] else text


def _errors(ledger: dict[str, Any]) -> str:
    """Median |ln(predicted/actual)| of queue wait and run time (0 exact, 0.69 a factor of 2)."""
    if not ledger["jobs"]:
        return "-"
    q, r = ledger["queue_error"], ledger["run_error"]
    return f"{'-' if q is None else f'{q:.2f}'}/{'-' if r is None else f'{r:.2f}'} (n={ledger['jobs']})"


def _node_cells(n: dict[str, Any]) -> list[str]:
    load = "-" if n["load_1"] is None else f"{n['load_1']:.2f}"
    free = n["mem_free_mb"] if n["mem_free_mb"] is not None else n["mem_total_mb"] - n["mem_alloc_mb"]
    return [
        n["name"],
        n["state"],
        "yes" if n["available"] else "no",
        f"{n['cores_alloc']}/{n['cores_total']}",
        f"{free / 1024:.1f}/{n['mem_total_mb'] / 1024:.1f}",
        f"{n['gpus_alloc']}/{n['gpus_total']}",
        load,
        ",".join(n["partitions"]),
    ]


def _partition_cells(p: dict[str, Any]) -> list[str]:
    return [
        p["name"],
        "yes" if p["is_default"] else "",
        p["state"],
        "yes" if p["available"] else "no",
        str(p["nodes_total"]),
        str(p["cores_total"]),
        " ".join(f"{k}={v}" for k, v in sorted(p["limits"].items())),
    ]


def _row_style(row: dict[str, Any]) -> str | None:
    if row["disabled"]:
        return "magenta"
    if not row["reachable"]:
        return "red"
    return "yellow" if row["stale"] else None


def _rich(data: Any, dest: str | None) -> RenderableType:
    from rich.console import Group
    from rich.table import Table

    now = datetime.now(UTC).strftime("%H:%M:%S UTC")
    rows = [data["destination"]] if dest is not None else data
    t = Table(*HEADERS, title=f"metasched status ({now})")
    for row in rows:
        t.add_row(*_cells(row), style=_row_style(row))
    if dest is None:
        return t
    nodes = Table(*NODE_HEADERS, title="nodes")
    for n in data["nodes"]:
        nodes.add_row(*_node_cells(n), style=None if n["available"] else "red")
    parts = Table(*PARTITION_HEADERS, title="partitions")
    for p in data["partitions"]:
        parts.add_row(*_partition_cells(p), style=None if p["available"] else "red")
    return Group(t, nodes, parts)


def _plain(data: Any, dest: str | None) -> str:
    from metasched.cli.text import table

    if dest is None:
        return table(HEADERS, [_cells(r) for r in data])
    return "\n\n".join(
        [
            table(HEADERS, [_cells(data["destination"])]),
            table(NODE_HEADERS, [_node_cells(n) for n in data["nodes"]]),
            table(PARTITION_HEADERS, [_partition_cells(p) for p in data["partitions"]]),
        ]
    )


def _read(cfg: Config, store: Store, dest: str | None) -> Any:
    from metasched.app.status import destination_detail, status_report

    now = datetime.now(UTC)
    if dest is None:
        return status_report(cfg, store, now)
    detail = destination_detail(cfg, store, dest, now)
    if detail is None:
        raise InputError(f"destination: no destination {dest!r} in the config or the store")
    return detail


def status(
    destination: DestArg = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    watch: WatchOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Show every destination: reachable, age of the last good collect (stale rows highlighted),
    capacity, nodes unavailable, queue, median queue time, placements in flight and the prediction
    error (median |ln(predicted/actual)| of queue wait and run time), disabled or last error.

    With DESTINATION: its nodes and partitions too.
    """
    setup_logging(verbose)
    try:
        cfg, store = open_context(config, database)
        data = _read(cfg, store, destination)
    except Exception as exc:
        fail(exc, verbose)
    try:
        if watch is None:
            _show(data, destination, json_out)
        elif sys.stdout.isatty() and not json_out:
            _watch_live(cfg, store, destination, watch, data)
        else:
            while True:
                _show(data, destination, json_out)
                sys.stdout.flush()
                time.sleep(watch)
                if not json_out:
                    print()
                data = _read(cfg, store, destination)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except Exception as exc:
        fail(exc, verbose)
    finally:
        store.close()


def _show(data: Any, dest: str | None, json_out: bool) -> None:
    if json_out:
        print(json.dumps(data, indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(_rich(data, dest))
    else:
        print(_plain(data, dest))


def _watch_live(cfg: Config, store: Store, dest: str | None, every: float, data: Any) -> None:
    from rich.live import Live

    with Live(_rich(data, dest), auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(every)
            live.update(_rich(_read(cfg, store, dest), dest), refresh=True)
