"""`metasched config ...`."""

from __future__ import annotations

import json
import os
import sys

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, JsonOpt, VerboseOpt, fail, setup_logging
from metasched.errors import ConfigError, ExitCode

app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)


@app.command("check")
def check(
    config: ConfigOpt = None, database: DatabaseOpt = None, verbose: VerboseOpt = 0, as_json: JsonOpt = False
) -> None:
    """Validate the config file and print every problem as FILE: key.path: message.

    Exit 0 when the file is usable, 2 when it is not. Without --config the same file the other
    commands would use is checked (or the built-in default when there is none).
    """
    from metasched.config import database_url, load_config, resolve_config_path

    setup_logging(verbose)
    env = dict(os.environ)
    try:
        path = resolve_config_path(config, env)
        label = str(path) if path is not None else "built-in default"
        try:
            cfg = load_config(path, env)
        except ConfigError as exc:
            if as_json:
                print(json.dumps({"ok": False, "problems": exc.problems, "destinations": []}, indent=2))
            for line in exc.problems:
                print(line, file=sys.stderr)
            raise typer.Exit(int(ExitCode.USAGE)) from None
        ids = [d.id for d in cfg.destinations]
        if as_json:
            db = database_url(cfg, database, env)
            print(json.dumps({"ok": True, "problems": [], "destinations": ids, "database": db}, indent=2))
        else:
            print(f"{label}: ok ({len(ids)} destination{'' if len(ids) == 1 else 's'})")
    except typer.Exit:
        raise
    except Exception as exc:
        fail(exc, verbose)
