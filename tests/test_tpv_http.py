"""End to end over HTTP: TPV's own `tpv dry-run` maps a job with examples/tpv/metasched_rank_http.yml,
whose `rank:` block POSTs to a real `metasched serve` (a subprocess on a free loopback port, asking for a
bearer token read from a file) over a store the real `metasched collect` filled from two real Slurm test
clusters: site_a full with a queue, site_b idle. TPV's tags prefer site_a; metasched sends the job to
site_b.

Then every failure must give TPV's own order (site_a) with one warning, and finish within the timeout
plus a generous margin: serve stopped (connection refused), a loopback socket that accepts and never
answers, a loopback HTTP server answering 500, garbage, unknown or duplicate ids, and serve itself
refusing a wrong token (401). All scenarios run in one TPV process (tests/infra/tpv.py: importing Galaxy
costs ~12 s).

The fast tests at the end exec the block the way TPV's loader does, against the same loopback servers,
for what a dry-run cannot show: the full order, the headers sent, proxies ignored, a server that trickles
bytes forever (urllib's per-read timeout never fires; the block's own deadline must).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.infra.procs import free_port, wait_for
from tests.infra.serve import wait_listening
from tests.infra.sshd import SSHServer
from tests.infra.tpv import (
    BUSY,
    IDLE,
    JOB_CONF,
    DryRun,
    FakeDestination,
    Sites,
    busy_and_idle,
    clean_env,
    collect,
    driver_results,
    dry_run_argv,
    ensure_tpv_env,
    exec_rank_block,
    metasched_bin,
    rank_block,
    start_driver,
    write_tpv_site,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tpv"
FRAGMENT = EXAMPLES / "metasched_rank_http.yml"
TOKEN = "serve-t0ken-4711"
DEFAULT_TIMEOUT_S = 2.0  # the fragment's default; the failure scenarios leave metasched_timeout unset
MARGIN_S = 60.0  # generous: a loaded machine may be slow, but nothing here may wait for a silent server


@dataclass
class Held:
    """One connection to the silent server: when it was accepted and when the client closed it."""

    accepted: float
    closed: float | None = None


class SilentServer:
    """Accepts connections on loopback and never sends a byte; notes when each client gives up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[Held] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                held = Held(time.monotonic())
                self.held.append(held)
                self.conns.append(conn)
                threading.Thread(target=self._drain, args=(conn, held), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket, held: Held) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        held.closed = time.monotonic()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@dataclass
class Canned:
    """A loopback HTTP server with one canned answer per path prefix; it records what it was sent."""

    server: ThreadingHTTPServer
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def url(self, status: int, body: bytes | str) -> str:
        """A fresh base URL whose /v1/rank answers ``status`` with ``body``."""
        prefix = f"/c{next(self.ids)}"
        self.answers[f"{prefix}/v1/rank"] = (status, body.encode() if isinstance(body, str) else body)
        self.requests[prefix] = []
        return f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"

    def sent(self, url: str) -> list[tuple[dict[str, str], bytes]]:
        return self.requests[url[url.rindex("/") :]]


def start_canned() -> Canned:
    canned: Canned

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            prefix = self.path.removesuffix("/v1/rank")
            if prefix in canned.requests:
                canned.requests[prefix].append((dict(self.headers.items()), body))
            status, answer = canned.answers.get(self.path, (404, b'{"detail": "Not Found"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads ``canned.requests`` instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    canned = Canned(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return canned


@pytest.fixture(scope="module")
def canned() -> Iterator[Canned]:
    c = start_canned()
    yield c
    c.server.shutdown()
    c.server.server_close()


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_serve(config: Path, log: Path) -> Serve:
    """`metasched serve --no-collect` on a free loopback port: it answers from the collected store."""
    port = free_port()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [metasched_bin(), "serve", "-c", str(config), "--port", str(port), "--no-collect"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
    serve = Serve(proc, port, log)
    try:
        wait_listening(proc, port, log)
    except BaseException:
        serve.stop()
        raise
    return serve


def rank_requests(serve: Serve) -> dict[str, float]:
    """serve's own count of POST /v1/rank answers, by status code (from /metrics, an open endpoint)."""
    with urllib.request.urlopen(f"{serve.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "metasched_http_requests_total" and sample.labels.get("path") == "/v1/rank":
                counts[sample.labels["code"]] = counts.get(sample.labels["code"], 0) + sample.value
    return counts


@dataclass(frozen=True)
class Runs:
    driver: dict[str, DryRun]
    silent: SilentServer
    canned: Canned
    partial_url: str
    rank_counts: dict[str, float]


@pytest.fixture(scope="module")
def sites(sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    with busy_and_idle(sshd, tmp_path_factory.mktemp("tpv-http-sites")) as s:
        yield s


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, sites: Sites, canned: Canned) -> Iterator[Runs]:
    tpv = ensure_tpv_env()
    work = tmp_path_factory.mktemp("tpv-http")
    job_conf = work / "job_conf.yml"
    job_conf.write_text(JOB_CONF)
    token_file = work / "serve-token"
    token_file.write_text(TOKEN + "\n")
    config = sites.config("serve", serve={"token_file": str(token_file)})
    collect(config)
    serve = start_serve(config, work / "serve.log")
    stopped = start_serve(config, work / "stopped.log")
    stopped.stop()
    silent = SilentServer()
    try:
        partial_url = canned.url(200, '{"sorted_destinations": ["site_b"]}')
        # Only the headline scenario gets a generous timeout: a loaded machine must not turn it into a
        # fallback. The failures run with the fragment's default (2 s).
        contexts: dict[str, dict[str, object]] = {
            "http": {
                "metasched_url": serve.url,
                "metasched_token_file": str(token_file),
                "metasched_timeout": 10,
            },
            "wrong-token": {"metasched_url": serve.url, "metasched_token": "not-the-token"},
            "stopped": {"metasched_url": stopped.url},
            "silent": {"metasched_url": silent.url},
            "500": {"metasched_url": canned.url(500, '{"detail": "rank exploded"}')},
            "garbage": {"metasched_url": canned.url(200, "<html>502 Bad Gateway</html>")},
            "unknown": {"metasched_url": canned.url(200, '{"sorted_destinations": ["site_b", "elsewhere"]}')},
            "duplicate": {"metasched_url": canned.url(200, '{"sorted_destinations": ["site_b", "site_b"]}')},
            "partial": {
                "metasched_url": partial_url,
                "metasched_token": "inline-t0ken",
                "metasched_timeout": 10,
            },
        }
        scenarios = {"tpv-alone": dry_run_argv(job_conf, write_tpv_site(work / "site-alone.yml"))}
        for name, context in contexts.items():
            site = write_tpv_site(work / f"site-{name}.yml", **context)
            scenarios[name] = dry_run_argv(job_conf, FRAGMENT, site)
        results = driver_results(start_driver(tpv, work, scenarios, clean_env()), work)
        counts = rank_requests(serve)
        yield Runs(results, silent, canned, partial_url, counts)
    finally:
        silent.close()
        serve.stop()


@pytest.mark.slow
def test_tpv_alone_prefers_the_busy_site_by_tags(runs: Runs) -> None:
    assert runs.driver["tpv-alone"].winner == BUSY


@pytest.mark.slow
def test_serve_over_http_sends_the_job_to_the_idle_cluster(runs: Runs) -> None:
    """The real serve, the token from a file, state from the real collect: metasched beats the tags."""
    run = runs.driver["http"]
    assert not run.fell_back, run.stdout
    assert run.winner == IDLE
    assert runs.rank_counts.get("200", 0) >= 1  # serve itself answered it
    assert runs.rank_counts.get("401", 0) >= 1  # and refused the wrong token


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "why"),
    [
        ("wrong-token", "HTTP 401"),
        ("stopped", "Connection refused"),
        ("silent", "timed out"),
        ("500", "HTTP 500: rank exploded"),
        ("garbage", "JSONDecodeError"),
        ("unknown", "unknown or repeated ids: ['elsewhere']"),
        ("duplicate", "unknown or repeated ids: ['site_b', 'site_b']"),
    ],
)
def test_failing_serve_keeps_tpv_order_within_the_timeout(runs: Runs, scenario: str, why: str) -> None:
    run = runs.driver[scenario]
    assert run.winner == BUSY
    assert run.fell_back, run.stdout
    assert why in run.stdout, run.stdout
    assert run.elapsed < DEFAULT_TIMEOUT_S + MARGIN_S


@pytest.mark.slow
def test_silent_server_is_waited_for_the_timeout_then_dropped(runs: Runs) -> None:
    """The block reached the silent server, waited (about) its 2 s default, then closed the connection,
    long before the server would ever answer (never)."""
    assert runs.driver["silent"].elapsed >= DEFAULT_TIMEOUT_S * 0.9
    assert len(runs.silent.held) == 1
    held = runs.silent.held[0]
    wait_for(lambda: held.closed is not None, timeout=MARGIN_S, what="the block to close its connection")
    assert held.closed is not None and held.closed - held.accepted < DEFAULT_TIMEOUT_S + MARGIN_S


@pytest.mark.slow
def test_partial_answer_leads_and_request_carries_job_token_and_no_metrics(runs: Runs) -> None:
    run = runs.driver["partial"]
    assert not run.fell_back, run.stdout
    assert run.winner == IDLE
    [(headers, body)] = runs.canned.sent(runs.partial_url)
    assert headers["Authorization"] == "Bearer inline-t0ken"
    assert headers["Content-Type"] == "application/json"
    request = json.loads(body)
    assert request["job"] == {"tool_id": "bwa", "job_id": request["job"]["job_id"], "cores": 2, "mem": 1}
    assert [d["id"] for d in request["destinations"]] == [BUSY, IDLE]
    assert all("metrics" not in d for d in request["destinations"])
    assert [d["size"] for d in request["datasets"].values()] == [3 * 1024**3]


# --- the block without Galaxy ------------------------------------------------------------------------


def _candidates() -> list[FakeDestination]:
    return [FakeDestination("low", 1), FakeDestination("high", 5), FakeDestination("mid", 3)]


def _run_block(candidates: list[FakeDestination], **context: object) -> list[str]:
    scope: dict[str, Any] = {"candidate_destinations": candidates, "cores": 4, **context}
    ranked = exec_rank_block(rank_block(FRAGMENT), scope)
    return [d.id for d in ranked]


def test_block_never_names_input_size() -> None:
    """TPV computes the job's input size before the block whenever that text appears in it."""
    assert "input_size" not in rank_block(FRAGMENT)


def test_block_full_order_token_file_and_no_proxy(
    canned: Canned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unranked candidates follow in TPV order; the token file wins over the inline token; a proxy in
    the handler's environment is not used for serve (this one would refuse the connection)."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    url = canned.url(200, '{"sorted_destinations": ["low"]}')
    order = _run_block(
        _candidates(), metasched_url=url, metasched_token="inline", metasched_token_file=str(token_file)
    )
    assert order == ["low", "high", "mid"]
    [(headers, body)] = canned.sent(url)
    assert headers["Authorization"] == "Bearer from-file"
    request = json.loads(body)
    assert request["job"] == {"cores": 4}
    assert request["datasets"] == {}
    assert [d["tpv_score"] for d in request["destinations"]] == [5, 3, 1]


@pytest.mark.parametrize(
    ("status", "answer", "why"),
    [
        (200, '{"sorted_destinations": ["mid", "mid"]}', "repeated ids"),
        (200, '{"sorted_destinations": "mid"}', "not a list of ids"),
        (200, '{"sorted_destinations": [1, 2]}', "not a list of ids"),
        (200, '{"ranked": []}', "KeyError"),
        (200, "[]", "TypeError"),
        (200, "", "JSONDecodeError"),
        (404, '{"detail": "Not Found"}', "HTTP 404: Not Found"),
        (422, '{"detail": "job.cores: must be >= 0"}', "HTTP 422: job.cores: must be >= 0"),
        (503, "<html>unavailable</html>", "HTTP 503: <html>unavailable</html>"),
    ],
)
def test_block_bad_answers_keep_tpv_order(
    canned: Canned, caplog: pytest.LogCaptureFixture, status: int, answer: str, why: str
) -> None:
    with caplog.at_level(logging.WARNING):
        order = _run_block(_candidates(), metasched_url=canned.url(status, answer))
    assert order == ["high", "mid", "low"]
    assert "metasched rank failed, keeping TPV order" in caplog.text and why in caplog.text


def test_block_without_url_or_with_unreadable_token_keeps_tpv_order(
    canned: Canned, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = canned.url(200, '{"sorted_destinations": ["low"]}')
    with caplog.at_level(logging.WARNING):
        assert _run_block(_candidates()) == ["high", "mid", "low"]
        assert "metasched_url is not set" in caplog.text
        missing = str(tmp_path / "no-token")
        assert _run_block(_candidates(), metasched_url=url, metasched_token_file=missing) == [
            "high",
            "mid",
            "low",
        ]
        assert "FileNotFoundError" in caplog.text
    assert canned.sent(url) == []


def test_block_survives_a_raising_tag_score(canned: Canned) -> None:
    url = canned.url(200, '{"sorted_destinations": ["b", "a"]}')
    assert _run_block([FakeDestination("a", -1), FakeDestination("b", 2)], metasched_url=url) == ["a", "b"]


def test_block_single_candidate_does_not_call_serve(canned: Canned) -> None:
    url = canned.url(200, '{"sorted_destinations": []}')
    assert _run_block([FakeDestination("only", 1)], metasched_url=url) == ["only"]
    assert canned.sent(url) == []


def test_block_deadline_holds_against_a_trickling_server(caplog: pytest.LogCaptureFixture) -> None:
    """A server that sends a header byte every 0.2 s forever: no single read ever times out, so only
    the block's own deadline ends the wait (the server keeps trickling after the block gave up)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(0.2):
                    conn.sendall(b"a")

    threading.Thread(target=trickle, daemon=True).start()
    result: list[list[str]] = []
    ask = threading.Thread(
        target=lambda: result.append(
            _run_block(_candidates(), metasched_url=f"http://127.0.0.1:{port}", metasched_timeout=1)
        ),
        daemon=True,
    )
    try:
        with caplog.at_level(logging.WARNING):
            ask.start()
            ask.join(MARGIN_S)
        assert not ask.is_alive(), "the block kept waiting for a server that never finishes"
        assert result == [["high", "mid", "low"]]
        assert "timed out after 1s waiting for" in caplog.text
    finally:
        stop.set()
        sock.close()
