"""InfluxDB 1.x over its HTTP API (``/query``, ``/write``) with the standard library only.

Galaxy sites run 1.x (Debian ships 1.6.7, which lacks the ``/api/v2`` endpoints influxdb-client
needs). Every value in a query travels as a bind parameter (``params=``); only identifiers from the
config are put into the text, quoted and escaped.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from metasched.domain.errors import MetaschedError
from metasched.metrics.measurements import FieldValue, Point
from metasched.settings.measurements import MeasurementSpec


class InfluxError(MetaschedError):
    """Talking to InfluxDB failed."""


class InfluxServerError(InfluxError):
    """The server as a whole is unusable (unreachable, TLS, authentication, 5xx): stop asking it."""


class InfluxQueryError(InfluxError):
    """One statement failed; other measurements may still work."""


def quote_ident(name: str) -> str:
    """InfluxQL double-quoted identifier with ``\\`` and ``"`` escaped."""
    if "\n" in name or "\r" in name:
        raise ValueError(f"identifier {name!r} contains a newline")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ssl_context(verify: bool) -> ssl.SSLContext:
    """The seed always verified; sites with self-signed certificates may turn it off explicitly."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_query(spec: MeasurementSpec) -> str:
    """One statement per measurement covering every destination; the time bound is ``$since``."""
    m = quote_ident(spec.name)
    if spec.kind == "queue":
        count = quote_ident(spec.col("count"))
        dest, state = quote_ident(spec.col("destination")), quote_ident(spec.col("state"))
        return f"SELECT last({count}) AS {count} FROM {m} WHERE time > $since GROUP BY {dest}, {state}"
    if spec.kind == "queue_run_time":
        fields = ", ".join(quote_ident(spec.col(r)) for r in ("count", "median_queue", "median_run"))
        dest, tool = quote_ident(spec.col("destination")), quote_ident(spec.col("tool"))
        return (
            f"SELECT {fields} FROM {m} WHERE time > $since GROUP BY {dest}, {tool} ORDER BY time DESC LIMIT 1"
        )
    # htcondor (both generations, told apart by shape) and carbon: raw points of the window.
    return f"SELECT * FROM {m} WHERE time > $since GROUP BY *"


def result_points(body: Mapping[str, Any]) -> list[Point]:
    """Points of the first statement's answer; a statement error raises ``InfluxQueryError``."""
    if "error" in body:
        raise InfluxQueryError(str(body["error"]))
    results = body.get("results") or [{}]
    first = results[0]
    if "error" in first:
        raise InfluxQueryError(str(first["error"]))
    points: list[Point] = []
    for series in first.get("series") or []:
        tags = {k: v for k, v in (series.get("tags") or {}).items() if isinstance(v, str)}
        columns: list[str] = series.get("columns") or []
        if not columns or columns[0] != "time":
            raise InfluxQueryError(f"unexpected answer: first column is not time: {columns[:3]}")
        for row in series.get("values") or []:
            fields: dict[str, FieldValue] = dict(zip(columns[1:], row[1:], strict=False))
            points.append(Point(time=int(row[0]), tags=tags, fields=fields))
    return points


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """InfluxDB never redirects; following one would send the Basic auth header to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Influx1Client:
    """One server, one database. Credentials go in a Basic auth header, never in the URL."""

    def __init__(
        self,
        url: str,
        database: str | None,
        *,
        username: str | None = None,
        password: str | None = None,
        verify_ssl: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout = timeout
        self._headers = {"Accept": "application/json"}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if self.url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context(verify_ssl)))
        self._opener = urllib.request.build_opener(*handlers)

    def _request(
        self, method: str, path: str, query: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}" if query else f"{self.url}{path}"
        headers = dict(self._headers)
        if body is not None and path == "/query":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        except (
            urllib.error.URLError,
            TimeoutError,
            ConnectionError,
            ssl.SSLError,
            http.client.HTTPException,
        ) as e:
            reason = getattr(e, "reason", e)
            raise InfluxServerError(f"{self.url}: unreachable: {reason}") from e
        except OSError as e:
            raise InfluxServerError(f"{self.url}: {e}") from e
        message = _error_message(payload)
        if status in (401, 403):
            raise InfluxServerError(f"{self.url}: authentication failed ({status}): {message}")
        if status >= 500:
            raise InfluxServerError(f"{self.url}: server error {status}: {message}")
        raise InfluxQueryError(f"HTTP {status}: {message}")

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    def ping(self) -> None:
        status, _ = self._request("GET", "/ping", {}, None)
        if status != 204:
            raise InfluxServerError(f"{self.url}: /ping answered {status}")

    def query(self, q: str, params: Mapping[str, Any] | None = None, *, post: bool = False) -> list[Point]:
        """Run one statement with bind parameters; times come back as epoch seconds."""
        args = {"q": q, "epoch": "s"}
        if self.database:
            args["db"] = self.database
        if params:
            args["params"] = json.dumps(dict(params))
        if post:
            status, payload = self._request("POST", "/query", {}, urllib.parse.urlencode(args).encode())
        else:
            status, payload = self._request("GET", "/query", args, None)
        try:
            body = json.loads(payload)
        except ValueError as e:
            raise InfluxQueryError(f"answer is not JSON (HTTP {status})") from e
        if not isinstance(body, dict):
            raise InfluxQueryError("answer is not a JSON object")
        return result_points(body)

    def points(self, spec: MeasurementSpec, since: datetime) -> list[Point]:
        since_ns = int(since.timestamp()) * 1_000_000_000
        return self.query(build_query(spec), {"since": since_ns})

    def write(self, lines: Sequence[str], precision: str = "s") -> None:
        args = {"precision": precision}
        if self.database:
            args["db"] = self.database
        body = "\n".join(lines).encode()
        if body:
            self._request("POST", "/write", args, body)


def _error_message(payload: bytes) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return payload[:200].decode("utf-8", "replace").strip()
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:200]
