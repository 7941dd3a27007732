"""`metasched serve`: periodic collect plus the HTTP ranking service, in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metasched.cli.common import ConfigOpt, DatabaseOpt, VerboseOpt, fail, setup_logging

HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host",
        help="Address to listen on. Default: serve.host of the config, else 127.0.0.1.",
        show_default=False,
    ),
]
PortOpt = Annotated[
    int | None,
    typer.Option(
        "--port", min=1, max=65535, help="TCP port. Default: serve.port, else 8000.", show_default=False
    ),
]
DatabaseFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--database-file",
        help="SQLite database file (seed-2 spelling of --database).",
        show_default=False,
        dir_okay=False,
    ),
]
SSHKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--ssh-key-file",
        help="SSH private key for every destination (overrides the config).",
        show_default=False,
    ),
]
SSHUserOpt = Annotated[
    str | None,
    typer.Option(
        "--ssh-user", help="SSH login user for every destination (overrides the config).", show_default=False
    ),
]
NoCollectOpt = Annotated[
    bool,
    typer.Option(
        "--no-collect",
        help="Only answer HTTP; leave collecting to metasched-collect.timer (or another process).",
    ),
]


def serve(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    database_file: DatabaseFileOpt = None,
    ssh_key_file: SSHKeyOpt = None,
    ssh_user: SSHUserOpt = None,
    no_collect: NoCollectOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Collect every collect.interval seconds and answer HTTP: POST /v1/rank, POST /process_data,
    GET /v1/status, /healthz, /metrics, API docs at /docs (see docs/serve.md).

    Runs in the foreground, logging to stderr. SIGTERM stops cleanly (exit 0); SIGHUP reloads the config.
    """
    setup_logging(max(verbose, 1))  # info: one line per collect cycle and lifecycle event
    import logging
    import os

    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    if database is not None and database_file is not None:
        fail(_usage("give --database or --database-file, not both"))
    try:
        from metasched.serve.state import Overrides, apply_overrides
        from metasched.serve.workers import serve_forever
        from metasched.settings import database_url, load_config, resolve_config_path

        env = dict(os.environ)
        path = resolve_config_path(config, env)
        overrides = Overrides(
            host=host,
            port=port,
            ssh_user=ssh_user,
            ssh_key_file=str(ssh_key_file.expanduser().absolute()) if ssh_key_file is not None else None,
        )
        cfg = apply_overrides(load_config(path, env), overrides)
        override_db = str(database_file) if database_file is not None else database
        url = database_url(cfg, override_db, env)
        code = serve_forever(cfg, url, config_path=path, env=env, overrides=overrides, collect=not no_collect)
    except Exception as exc:
        fail(exc, verbose)
    raise typer.Exit(code)


def _usage(message: str) -> Exception:
    from metasched.domain.errors import InputError

    return InputError(message)
