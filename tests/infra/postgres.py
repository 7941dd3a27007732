"""A real PostgreSQL 15 (Debian's binaries) on loopback, and ``store_url`` to run tests on both backends.

The cluster lives in a temp dir, is initdb'd and run as the ``postgres`` OS user when we are root
(initdb refuses root), listens on 127.0.0.1:<free port> with its unix socket in the temp dir,
trusts local connections, and is stopped by PID with SIGINT (fast shutdown) at the end of the session.
Durability settings are off: the cluster is thrown away, and the crash tests run on SQLite.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.infra.procs import free_port, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


@dataclass
class PostgresServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"

    def url(self, dbname: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop to the postgres user when root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": PG_USER, "group": pwd.getpwnam(PG_USER).pw_gid}


def _admin_sql(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE cannot run inside one)."""
    import psycopg

    conn = psycopg.connect(url, connect_timeout=5, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def start_postgres() -> PostgresServer:
    """initdb a throwaway cluster and start it; raises with the log tail when it does not come up."""
    base = Path(tempfile.mkdtemp(prefix="metasched-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER, PG_USER)
    as_user = _run_as()
    init = subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "-A",
            "trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        check=False,
        **as_user,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    port = free_port()
    log = (base / "postgres.log").open("ab")
    proc = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(base),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        **as_user,
    )
    log.close()
    server = PostgresServer(port=port, dir=base, proc=proc)
    try:
        wait_for(
            lambda: proc.poll() is None and _ping(server), timeout=30, what="postgres to accept connections"
        )
    except TimeoutError:
        stop_postgres(server)
        raise RuntimeError(
            f"postgres did not start: {server.log.read_text(errors='replace')[-2000:]}"
        ) from None
    return server


def _ping(server: PostgresServer) -> bool:
    _admin_sql(server.url("postgres"), "SELECT 1")
    return True


def stop_postgres(server: PostgresServer) -> None:
    """Fast shutdown (SIGINT to the postmaster by PID), then remove the cluster."""
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGINT)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
    shutil.rmtree(server.dir, ignore_errors=True)


def create_database(server_url: str, dbname: str, options: str = "") -> str:
    """A fresh database on the server of ``server_url`` (``options``: CREATE DATABASE clauses); its URL."""
    _admin_sql(server_url, f'CREATE DATABASE "{dbname}" {options}')
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def drop_database(server_url: str, dbname: str) -> None:
    _admin_sql(server_url, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """URL of a database ``metasched`` on a throwaway PostgreSQL 15 server (session-wide)."""
    server = start_postgres()
    try:
        _admin_sql(server.url("postgres"), "CREATE DATABASE metasched")
        yield server.url("metasched")
    finally:
        stop_postgres(server)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL per test: a SQLite file in tmp_path, or a new database on the shared server."""
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "metasched.db")
        return
    server_url: str = request.getfixturevalue("postgres")
    dbname = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(server_url, dbname)
    try:
        yield url
    finally:
        drop_database(server_url, dbname)
