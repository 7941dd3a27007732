"""`metasched collect`: one collect run of every configured destination."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Annotated

import msgspec
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
from metasched.domain.errors import ConfigError

if TYPE_CHECKING:  # the collect service loads when the command runs: other commands never pay for it
    from metasched.app.collect import CollectReport, DestinationResult
    from metasched.settings import Config
    from metasched.store import Store

OnlyOpt = Annotated[
    list[str] | None,
    typer.Option("--only", help="Collect only this destination id (repeatable).", show_default=False),
]


def collect(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    only: OnlyOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Collect nodes, partitions and jobs from every destination into the state store.

    Exit 0 all collected or a collect already running, 3 some failed (old state kept), 2 config error.
    """
    from metasched.app.collect import collect_all
    from metasched.app.lock import CollectAlreadyRunning

    setup_logging(verbose)
    # paramiko logs every failed handshake with a traceback; our one-line error says it all.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    if not verbose:  # the per-destination lines/table below already show each result
        logging.getLogger("metasched.collect").setLevel(logging.ERROR)
    tty = sys.stdout.isatty() and not json_out
    try:
        cfg, store = open_context(config, database)
        cfg = _select(cfg, only)
        with store:
            if tty:
                report = _collect_with_progress(cfg, store)
            else:
                report = collect_all(cfg, store, on_progress=None if json_out else _print_line)
    except CollectAlreadyRunning as exc:
        if json_out:
            print(json.dumps({"skipped": True, "reason": str(exc)}))
        else:
            print(f"metasched: {exc}", file=sys.stderr)
        raise typer.Exit(0) from None
    except Exception as exc:
        fail(exc, verbose)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
    elif tty:
        _print_table(report)
    else:
        duration = (report.finished - report.started).total_seconds()
        print(f"collect: {report.ok_count} ok, {report.failed_count} failed in {duration:.2f}s")
    raise typer.Exit(int(report.exit_code))


def _select(cfg: Config, only: list[str] | None) -> Config:
    if not only:
        return cfg
    known = {d.id for d in cfg.destinations}
    unknown = [i for i in only if i not in known]
    if unknown:
        raise ConfigError([f"--only: no destination {i!r} in the config" for i in unknown])
    return msgspec.structs.replace(cfg, destinations=tuple(d for d in cfg.destinations if d.id in only))


def _print_line(r: DestinationResult) -> None:
    """One line per destination as it completes: readable in journald and greppable."""
    if r.ok:
        print(f"{r.id} ok {r.duration_s:.2f}s {r.jobs} jobs {r.nodes} nodes", flush=True)
    else:
        print(f"{r.id} FAILED: {r.error}", flush=True)


def _collect_with_progress(cfg: Config, store: Store) -> CollectReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metasched.app.collect import collect_all

    enabled = sum(1 for d in cfg.destinations if d.enabled)
    with Progress(
        TextColumn("collect"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        transient=True,
    ) as progress:
        task = progress.add_task("", total=enabled)

        def advance(r: DestinationResult) -> None:
            progress.update(task, advance=1, description=f"{r.id} {'ok' if r.ok else 'FAILED'}")

        return collect_all(cfg, store, on_progress=advance)


def _print_table(report: CollectReport) -> None:
    from rich.console import Console
    from rich.table import Table

    duration = (report.finished - report.started).total_seconds()
    table = Table(
        "destination",
        "scheduler",
        "result",
        "time",
        "nodes",
        "jobs",
        "error",
        title=f"collect: {report.ok_count} ok, {report.failed_count} failed in {duration:.2f}s",
    )
    for r in report.results:
        table.add_row(
            r.id,
            r.scheduler,
            "ok" if r.ok else "FAILED",
            f"{r.duration_s:.2f}s",
            str(r.nodes) if r.ok else "",
            str(r.jobs) if r.ok else "",
            r.error or "",
            style=None if r.ok else "red",
        )
    Console().print(table)
