"""Real InfluxDB 1.6.7 (Debian's ``influxd``) on loopback.

Fixtures: ``influxdb`` (auth off), ``influxdb_auth`` (auth on) and ``influxdb_tls`` (HTTPS with a
self-signed certificate for 127.0.0.1, auth off).

One server per mode per session, each on free ports in a temp dir, ready when ``GET /ping`` answers
204, stopped by PID with SIGTERM. Tests that need an empty database call ``fresh()`` so they do not see
each other's points. The auth server's admin password is full of characters that break naive quoting.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from metasched.settings import InfluxSettings
from tests.infra.procs import free_port, start, stop, wait_for

ADMIN_USER = "admin"
ADMIN_PASSWORD = "p@ss:w0rd \"q\" 'sq' \\ ;&%+=#?/é"

CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  auth-enabled = {auth}
  log-enabled = false
{tls}"""

TLS_CONF = """\
  https-enabled = true
  https-certificate = "{d}/cert.pem"
  https-private-key = "{d}/key.pem"
"""


@dataclass(frozen=True)
class InfluxServer:
    url: str
    database: str
    username: str | None
    password: str | None
    dir: Path
    cafile: Path | None = None  # the self-signed certificate of the TLS server

    def _request(self, path: str, args: dict[str, str], body: bytes | None) -> bytes:
        headers = {}
        if self.username is not None:
            cred = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {cred}"
        req = urllib.request.Request(
            f"{self.url}{path}?{urllib.parse.urlencode(args)}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10, context=_unverified()) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as e:
            raise AssertionError(f"InfluxDB {path} failed: {e.code} {e.read()!r}") from e

    def admin(self, q: str, params: dict[str, Any] | None = None) -> Any:
        """Run a statement (POST /query) with bind parameters; raise on any error in the answer."""
        args = {"q": q, "db": self.database, "epoch": "s"}
        if params:
            args["params"] = json.dumps(params)
        body = json.loads(self._request("/query", {}, urllib.parse.urlencode(args).encode()))
        for result in body.get("results", []):
            if "error" in result:
                raise AssertionError(f"InfluxDB error: {result['error']}")
        return body

    def write(self, lines: Iterable[str], precision: str = "s") -> None:
        """POST /write exactly these line-protocol lines (timestamps in ``precision``)."""
        self._request("/write", {"db": self.database, "precision": precision}, "\n".join(lines).encode())

    def fresh(self) -> InfluxServer:
        """The same server with a new, empty database."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin("CREATE DATABASE " + json.dumps(name))
        return replace(self, database=name)

    def settings(self, **overrides: Any) -> InfluxSettings:
        base: dict[str, Any] = {
            "url": self.url,
            "database": self.database,
            "username": self.username,
            "password": self.password,
            "timeout": 5.0,
        }
        base.update(overrides)
        return InfluxSettings(**base)


def _unverified() -> ssl.SSLContext:
    """The fixture's own requests trust whatever it started; the product's verification is under test."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _ping(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/ping", timeout=1, context=_unverified()) as resp:
        return int(resp.status) == 204


def _self_signed(d: Path) -> None:
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ),
            *("-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )


def _serve(auth: bool, tls: bool = False) -> Iterator[InfluxServer]:
    d = Path(tempfile.mkdtemp(prefix="metasched-influx-"))
    http = free_port()
    conf = d / "influxdb.conf"
    if tls:
        _self_signed(d)
    conf.write_text(
        CONF.format(
            rpc=free_port(),
            http=http,
            d=d,
            auth="true" if auth else "false",
            tls=TLS_CONF.format(d=d) if tls else "",
        )
    )
    proc = start(["influxd", "run", "-config", str(conf)], d / "influxd.log")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{http}"
    try:
        try:
            wait_for(lambda: _ping(url), timeout=30, what="influxd /ping")
        except TimeoutError as e:
            raise RuntimeError(f"influxd did not start: {(d / 'influxd.log').read_text()[-2000:]}") from e
        server = InfluxServer(
            url=url,
            database="metasched",
            username=None,
            password=None,
            dir=d,
            cafile=d / "cert.pem" if tls else None,
        )
        if auth:
            server.admin(
                f"CREATE USER {ADMIN_USER} WITH PASSWORD $pw WITH ALL PRIVILEGES", {"pw": ADMIN_PASSWORD}
            )
            server = replace(server, username=ADMIN_USER, password=ADMIN_PASSWORD)
        server.admin("CREATE DATABASE metasched")
        yield server
    finally:
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxServer]:
    """InfluxDB 1.6.7 with authentication off."""
    yield from _serve(auth=False)


@pytest.fixture(scope="session")
def influxdb_auth() -> Iterator[InfluxServer]:
    """InfluxDB 1.6.7 with authentication on; ``username``/``password`` are the admin's."""
    yield from _serve(auth=True)


@pytest.fixture(scope="session")
def influxdb_tls() -> Iterator[InfluxServer]:
    """InfluxDB 1.6.7 over HTTPS with a self-signed certificate (``cafile``) for 127.0.0.1; auth off."""
    yield from _serve(auth=False, tls=True)
