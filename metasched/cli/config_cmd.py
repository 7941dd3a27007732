"""`metasched config ...`."""

from __future__ import annotations

import json
import os
import sys

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, JsonOpt, VerboseOpt, fail, setup_logging
from metasched.domain.errors import ExitCode

app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)


@app.command("check")
def check(
    config: ConfigOpt = None, database: DatabaseOpt = None, verbose: VerboseOpt = 0, as_json: JsonOpt = False
) -> None:
    """Validate the config file and print every problem as FILE: key.path: message.

    Exit 0 when the file is usable, 2 when it is not. Without --config the same file the other
    commands would use is checked (or the built-in default when there is none).
    """
    from metasched.settings import database_url, resolve_config_path
    from metasched.settings.check import inspect_config

    setup_logging(verbose)
    env = dict(os.environ)
    try:
        report = inspect_config(resolve_config_path(config, env), env)
    except Exception as exc:
        fail(exc, verbose)
    cfg = report.config
    ids = [d.id for d in cfg.destinations] if cfg is not None else []
    if as_json:
        out = {"ok": not report.problems, "problems": report.problems, "destinations": ids}
        if cfg is not None:
            out["database"] = database_url(cfg, database, env)
        print(json.dumps(out, indent=2))
    if report.problems:
        for line in report.problems:
            print(line, file=sys.stderr)
        raise typer.Exit(int(ExitCode.USAGE))
    if not as_json:
        print(f"{report.label}: ok ({len(ids)} destination{'' if len(ids) == 1 else 's'})")
