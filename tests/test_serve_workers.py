"""``serve.workers: 2`` as a real service: one listening port, two worker processes under one parent,
one collect loop, one /metrics and /healthz for the whole service, signals reaching every worker.

Which worker accepts a connection is the kernel's choice; to ask a given worker, the other one is
stopped (SIGSTOP) meanwhile, so every new connection waits for the one still running.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from metasched.serve.peers import PUBLISH_EVERY_S
from tests.infra.procs import wait_for
from tests.infra.serve import Serve, metric_values, start_serve, write_config

PINGS = ("metasched_http_requests_total", (("code", "200"), ("method", "GET"), ("path", "/ping")))


def workers_of(server: Serve) -> list[int]:
    r = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True, check=False)
    return sorted(int(p) for p in r.stdout.split())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def two_workers(tmp_path: Path, servers: list[Serve]) -> tuple[Serve, list[int], Path]:
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 0.5, "jitter": 0},
            "serve": {"workers": 2},
            "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
        },
    )
    server = start_serve(tmp_path, config, "--database", str(tmp_path / "s.db"))
    servers.append(server)
    wait_for(lambda: len(workers_of(server)) == 2, 30, "two workers")
    return server, workers_of(server), config


@contextmanager
def only(pids: list[int], keep: int) -> Iterator[None]:
    """Every worker but ``keep`` stopped while the block runs."""
    held = [p for p in pids if p != keep]
    for p in held:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in held:
            os.kill(p, signal.SIGCONT)


def get(server: Serve, path: str, token: str | None = None) -> httpx.Response:
    """One request on a new connection (a kept-alive one stays with the worker it first reached)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.url + path, headers=headers, timeout=30)


def test_two_workers_answer_as_one_service(tmp_path: Path, servers: list[Serve]) -> None:
    server, pids, config = two_workers(tmp_path, servers)
    for n, pid in ((3, pids[0]), (5, pids[1])):  # each worker answers some
        with only(pids, pid):
            for _ in range(n):
                assert get(server, "/ping").status_code == 200

    def summed(pid: int) -> float:
        with only(pids, pid):
            return metric_values(get(server, "/metrics").text).get(PINGS, 0.0)

    # Whichever worker is scraped counts every worker's pings (the others' as of their last report).
    wait_for(lambda: all(summed(p) == 8 for p in pids), 10 * PUBLISH_EVERY_S, "pings summed over workers")

    def collected(pid: int) -> bool:
        with only(pids, pid):
            values = metric_values(get(server, "/metrics").text)
            return values.get(("metasched_collect_cycles_total", (("result", "ok"),)), 0) > 0

    wait_for(lambda: all(collected(p) for p in pids), 30, "the one collect loop seen by both workers")
    for pid in pids:
        with only(pids, pid):
            assert get(server, "/healthz").status_code == 200
    assert "collect loop runs in worker 0" in server.text()

    # SIGHUP to the service reloads every worker.
    text = config.read_text() + "\n"
    config.write_text(text.replace("workers: 2", "workers: 2\n  token: s3cret"))
    server.proc.send_signal(signal.SIGHUP)
    for pid in pids:
        with only(pids, pid):
            wait_for(lambda: get(server, "/v1/status").status_code == 401, 10, f"worker {pid} to reload")
            assert get(server, "/v1/status", "s3cret").status_code == 200

    assert server.stop() == 0
    assert not any(alive(p) for p in pids)


def test_a_worker_that_dies_stops_the_service_with_exit_1(tmp_path: Path, servers: list[Serve]) -> None:
    """systemd's Restart=on-failure then starts the service whole, collect loop included."""
    server, pids, _ = two_workers(tmp_path, servers)
    os.kill(pids[1], signal.SIGKILL)
    assert server.proc.wait(30) == 1
    assert "worker 1 exited (status -9) unasked" in server.text()
    assert not alive(pids[0])
