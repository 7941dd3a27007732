"""The ``metasched`` command line: thin adapters over the core functions.

Each command lives in its own module and imports its heavy dependencies inside the command
function, so ``metasched rank`` never pays for fabric or the web framework. ``rank`` runs once per
Galaxy job, so ``main()`` sends it to ``metasched.cli.rank_fast`` before Typer is even imported
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
        from metasched.cli.rank_fast import fast_main

        code = fast_main(sys.argv[2:], os.environ)
        if code is not None:
            sys.exit(code)
    sys.exit(run_app(build_app(), sys.argv[1:]))


def run_app(app: typer.Typer, argv: list[str]) -> int:
    """Run the Typer app; a usage error (bad option, bad value) is one line on stderr and exit 2.

    Click's standalone mode would print a boxed usage block instead: journald and scripts want one line
    that names the command and the option. A bare ``metasched`` still shows the help.
    """
    import typer

    try:
        result = app(args=argv, prog_name="metasched", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("metasched: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as exc:  # click's UsageError / BadParameter / NoSuchOption ...
        message = exc.format_message()
        if not message.strip():  # a group called without a command: Typer has printed its help already
            pass
        elif "\n" in message:  # the help screen of a group called without a command (older Typer)
            print(message, file=sys.stderr)
        else:
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "metasched"
            print(f"{where}: {message} (see --help)", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    return result if isinstance(result, int) else 0
