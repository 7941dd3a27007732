"""`metasched policy set|show` (runtime policy of a node group) and `metasched enforce` (renice now)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from metasched.app.collect import run_enforcement
from metasched.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    VerboseOpt,
    fail,
    open_context,
    setup_logging,
)

if TYPE_CHECKING:
    from metasched.policy import ActivePolicy

app = typer.Typer(help="Seed-2 cluster policies of node groups (docs/policies.md).", no_args_is_help=True)

NameArg = Annotated[
    str, typer.Argument(help="exclusive | best_effort | shared | dynamic", show_default=False)
]
GroupOpt = Annotated[
    str | None,
    typer.Option(
        "--group", "-g", help="Any destination of the group. Default: the only group.", show_default=False
    ),
]
HighOpt = Annotated[
    str | None,
    typer.Option(
        "--high-priority", help="The group's high-priority destination (best_effort).", show_default=False
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the renice commands; change nothing.")]


def _who() -> str:
    """The administrator as the audit log names them (the sudo caller when run through sudo)."""
    import getpass
    import os

    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user} (cli)"


def _line(p: dict[str, Any]) -> str:
    extra = ""
    if p["source"] == "runtime":
        extra = f" (runtime, set by {p['changed_by']} at {p['changed_at']}; config/previous: {p['previous']})"
    high = f", high_priority {p['high_priority']}" if p["high_priority"] else ""
    weights = ", ".join(f"{k} {v:g}" for k, v in p["weights"].items())
    enforce = f", enforce on (nice {p['nice']})" if p["enforce"] else ""
    return f"{p['group']}: {p['name']}{extra}{high}; weights {weights}{enforce}"


@app.command("set")
def set_(
    name: NameArg,
    group: GroupOpt = None,
    high_priority: HighOpt = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Switch a node group's policy now; persisted in the store, used by rank, serve and enforce.

    Setting the config's own policy removes the override. Exit 0 done, 2 bad name/group.
    """
    setup_logging(verbose)
    from metasched.policy import describe, set_policy

    try:
        cfg, store = open_context(config, database)
        try:
            old, new = set_policy(
                cfg, store, name, group=group, high_priority=high_priority, by=_who(), now=datetime.now(UTC)
            )
        finally:
            store.close()
    except Exception as exc:
        fail(exc, verbose)
    if json_out:
        print(json.dumps({"old": describe(old), "new": describe(new)}, indent=2))
    else:
        print(f"{new.group}: {old.name} -> {new.name} ({new.source})")


@app.command("show")
def show(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Every node group's active policy (config or runtime override) and the recent enforcement actions."""
    setup_logging(verbose)
    from metasched.policy import active_policies, describe, recent_actions

    try:
        cfg, store = open_context(config, database)
        try:
            policies: list[ActivePolicy] = active_policies(cfg, store)
            actions = recent_actions(store, 20)
        finally:
            store.close()
    except Exception as exc:
        fail(exc, verbose)
    data = {"policies": [describe(p) for p in policies], "recent_actions": actions}
    if json_out:
        print(json.dumps(data, indent=2))
        return
    if not policies:
        print("no policies (node groups) configured")
    for p in data["policies"]:
        print(_line(p))
    for a in actions:
        status = "ok" if a.get("ok") else f"FAILED: {a.get('error')}"
        where = f"{a.get('destination')} job {a.get('job')} on {a.get('node')}"
        print(f"  {a.get('at')} {where}: {a.get('command')} [{status}]")


def enforce(
    dry_run: DryRunOpt = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Renice the jobs of non-priority schedulers on shared nodes, as the active policies say.

    Runs for every group (collect/serve do it only for groups with enforce: true). --dry-run still
    asks the schedulers for jobs and pids but prints the renice commands instead of running them.
    Exit 0 done (or nothing to do), 3 when some action failed, 2 config problem.
    """
    setup_logging(verbose)
    from metasched.domain.errors import ExitCode

    try:
        cfg, store = open_context(config, database)
        try:
            report = run_enforcement(cfg, store, dry_run=dry_run)
        finally:
            store.close()
    except Exception as exc:
        fail(exc, verbose)
    if json_out:
        out = {"dry_run": dry_run, "actions": [a.to_dict() for a in report.actions], "notes": report.notes}
        print(json.dumps(out, indent=2))
    else:
        for a in report.actions:
            if dry_run:
                print(f"{a.command}  # on {a.host}: {a.destination} job {a.job} on {a.node}")
                continue
            status = "ok" if a.ok else f"FAILED: {a.error}"
            print(f"{a.destination} job {a.job} on {a.node} ({a.host}): {a.command} [{status}]")
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        if not report.actions:
            print("nothing to renice", file=sys.stderr)
    if report.failed:
        raise typer.Exit(int(ExitCode.PARTIAL))
