"""`metasched serve` as a real subprocess on a free loopback port, over real SQLite files, talked to with
httpx; collects go to the real sshd + Slurm fixtures (and `node` destinations run locally).

Failures are real ones: a destination on a closed port, a store whose schema another tool damaged
(the collect loop's writes fail, /healthz turns 503), oversized and malformed bodies, SIGTERM with a
request half sent, SIGHUP with a good and with a broken config.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metasched.app.lock import CollectLock, lock_path
from metasched.store import Store
from tests.infra.procs import free_port, wait_for
from tests.infra.serve import Serve, base_env, cli, metric_values, start_serve, write_config
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHServer

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"

SEED_REQUEST = {
    "objectstores": {"files_de": {"latitude": 51.0, "longitude": 10.0}},
    "datasets": {"1": {"object_store_id": "files_de", "size": 2_000_000_000}},
    "job_info": {"tool_id": "toolshed.g2.bx.psu.edu/repos/devteam/bowtie2/bowtie2/2.5", "mem": 1, "cores": 1},
    "destinations": [
        {"id": "slurm_ok", "latitude": 51.0, "longitude": 10.0},
        {"id": "closed"},
        {"id": "local"},
    ],
}


def same_moment(answer: dict[str, Any]) -> dict[str, Any]:
    """Rank reasons quote the state's age ("collected 62 s ago"): equal answers, asked a moment apart."""
    return json.loads(re.sub(r"\b\d+ s (ago|old)\b", r"N s \1", json.dumps(answer)))


def without_ages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("age_s",)} for r in rows]


# --- a real collect over SSH, then every endpoint -----------------------------------------------


@pytest.fixture
def cluster_config(tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster) -> Path:
    """Slurm over SSH and a closed port; login user and key come from --ssh-user/--ssh-key-file."""
    return write_config(
        tmp_path / "config.yml",
        {
            "ssh": {"known_hosts": str(sshd.known_hosts), "connect_timeout": 5, "command_timeout": 15},
            "collect": {"interval": 3600, "jitter": 0},
            "destinations": [
                {
                    "id": "slurm_ok",
                    "scheduler": "slurm",
                    "host": sshd.host,
                    "port": sshd.port,
                    "env": slurm.env,
                },
                {"id": "closed", "scheduler": "node", "host": "127.0.0.1", "port": free_port()},
                {"id": "local", "scheduler": "node", "host": "local"},
            ],
        },
    )


def test_serve_collects_and_answers_like_the_cli(
    tmp_path: Path, cluster_config: Path, sshd: SSHServer, servers: list[Serve]
) -> None:
    db = tmp_path / "state.db"
    env = base_env(tmp_path)
    server = start_serve(
        tmp_path,
        cluster_config,
        "--database-file",
        str(db),
        "--ssh-user",
        sshd.user,
        "--ssh-key-file",
        str(sshd.key_file),
        env=env,
    )
    servers.append(server)
    with server.client() as http:

        def collected() -> bool:
            rows = {r["id"]: r for r in http.get("/v1/status").json()}
            return rows["slurm_ok"]["last_success"] is not None and rows["closed"]["error"] is not None

        wait_for(collected, 60, "the first collect cycle")
        assert http.get("/healthz").json() == {"status": "ok"}

        status = {r["id"]: r for r in http.get("/v1/status").json()}
        assert status["slurm_ok"]["reachable"] and status["slurm_ok"]["cores_total"] > 0
        assert status["slurm_ok"]["nodes_unavailable"] >= 1  # the fixture's n3 is down
        assert not status["closed"]["reachable"]

        cli_env = {**env, "METASCHED_CONFIG": str(cluster_config), "METASCHED_DATABASE": str(db)}
        shown = cli(["status", "--json"], cli_env)
        assert shown.returncode == 0, shown.stderr
        assert without_ages(json.loads(shown.stdout)) == without_ages(http.get("/v1/status").json())

        detail = http.get("/v1/status/slurm_ok").json()
        assert {n["name"] for n in detail["nodes"]} >= {"n1", "n2", "n3"}
        assert detail["partitions"] and detail["destination"]["id"] == "slurm_ok"
        assert http.get("/v1/status/nope").status_code == 404

        # Rank parity: same request, same state, same answer as `metasched rank`.
        request = {
            "job": {"tool_id": "bowtie2", "cores": 1, "mem": 0.5},
            "destinations": [
                {"id": "closed"},
                {"id": "slurm_ok", "tpv_score": 1},
                {"id": "local"},
                {"id": "x"},
            ],
        }
        body = json.dumps(request).encode()
        answer = http.post("/v1/rank", content=body)
        by_cli = cli(["rank"], cli_env, stdin=body)
        assert answer.status_code == 200 and by_cli.returncode == 0, by_cli.stderr
        assert same_moment(answer.json()) == same_moment(json.loads(by_cli.stdout))
        assert set(answer.json()["sorted_destinations"]) == {"closed", "slurm_ok", "local", "x"}

        # The seed-1 endpoint: the seed's request shape, the seed's answer shape.
        seed = http.post("/process_data", json=SEED_REQUEST)
        seed_cli = cli(["rank"], cli_env, stdin=json.dumps(SEED_REQUEST).encode())
        assert seed.status_code == 200
        assert seed.json() == {"sorted_destinations": json.loads(seed_cli.stdout)["sorted_destinations"]}

        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        values = metric_values(metrics.text)
        dest = (("destination", "slurm_ok"),)
        assert values[("metasched_destination_up", dest)] == 1
        assert values[("metasched_destination_up", (("destination", "closed"),))] == 0
        assert values[("metasched_destination_collect_errors_total", (("destination", "closed"),))] >= 1
        assert values[("metasched_destination_cores_total", dest)] == status["slurm_ok"]["cores_total"]
        assert values[("metasched_destination_memory_total_bytes", dest)] == (
            status["slurm_ok"]["mem_total_mb"] * 1024 * 1024
        )
        assert ("metasched_destination_gpus_free", dest) in values
        running = values[("metasched_destination_jobs", (("destination", "slurm_ok"), ("state", "running")))]
        assert running == status["slurm_ok"]["jobs_running"] > 0
        assert values[("metasched_destination_last_success_timestamp_seconds", dest)] > 0
        assert ("metasched_destination_last_collect_duration_seconds", dest) in values
        assert values[("metasched_collect_loop_up", ())] == 1
        ranked = (("code", "200"), ("method", "POST"), ("path", "/v1/rank"))
        assert values[("metasched_http_requests_total", ranked)] == 1
        assert values[("metasched_http_request_duration_seconds_count", (("path", "/v1/rank"),))] == 1
        one = (("code", "404"), ("method", "GET"), ("path", "/v1/status/{destination}"))
        assert values[("metasched_http_requests_total", one)] == 1  # ids do not become label values

        docs = http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        spec = http.get("/openapi.json").json()
        assert {"/v1/rank", "/process_data", "/v1/status", "/healthz", "/metrics"} <= set(spec["paths"])
    assert server.stop() == 0


# --- bad input ------------------------------------------------------------------------------------


LOCAL_CONFIG = {
    "collect": {"interval": 3600, "jitter": 0},
    "serve": {"max_body_bytes": 4096},
    "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
}


@pytest.fixture
def local_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.yml", LOCAL_CONFIG)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One server without collect for the bad-input cases."""
    d = tmp_path_factory.mktemp("plain")
    server = start_serve(
        d, write_config(d / "config.yml", LOCAL_CONFIG), "--database", str(d / "s.db"), "--no-collect"
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "request"),
        (b'{"job": {"tool_id": "t"}, "destinations": [{"name": "a"}]}', "destinations[0].id"),
        (b'{"job": {"tool_id": "t", "cores": -2}, "destinations": [{"id": "a"}]}', "cores"),
        (b'{"job": {"tool_id": "t", "cores": "four"}, "destinations": [{"id": "a"}]}', "cores"),
        (b'{"job": {"tool_id": "t"}, "destinations": [{"id": "a"}, {"id": "a"}]}', "destinations[1].id"),
        (b"", "empty"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_bad_requests_are_422_naming_the_field(plain_server: Serve, body: bytes, field: str) -> None:
    with plain_server.client() as http:
        for path in ("/v1/rank", "/process_data"):
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            assert field in r.json()["detail"]


def test_oversized_bodies_get_413_and_other_mistakes_no_500(plain_server: Serve) -> None:
    server = plain_server
    big = json.dumps({"job": {"tool_id": "t"}, "destinations": [{"id": "d" * 5000}]}).encode()
    with server.client() as http:
        assert http.post("/v1/rank", content=big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
            for _ in range(10):
                yield b" " * 1000

        r = http.post("/v1/rank", content=chunks())
        assert r.status_code == 413 and "4096" in r.json()["detail"]
        assert http.get("/v1/rank").status_code == 405
        assert http.get("/nowhere").status_code == 404
        ok = http.post("/v1/rank", json={"job": {"tool_id": "t"}, "destinations": [{"id": "local"}]})
        assert ok.status_code == 200 and ok.json()["sorted_destinations"] == ["local"]
        codes = metric_values(http.get("/metrics").text)
        assert not [k for k in codes if k[0] == "metasched_http_requests_total" and ("code", "500") in k[1]]


# --- authentication -------------------------------------------------------------------------------


def test_bearer_token_from_a_systemd_credential(
    tmp_path: Path, local_config: Path, servers: list[Serve]
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "serve-token").write_text("t0ken-123\n")
    env = {**base_env(tmp_path), "CREDENTIALS_DIRECTORY": str(creds)}
    server = start_serve(
        tmp_path, local_config, "--database", str(tmp_path / "s.db"), "--no-collect", env=env
    )
    servers.append(server)
    request = {"job": {"tool_id": "t"}, "destinations": [{"id": "local"}]}
    with server.client() as anon, server.client("wrong") as wrong, server.client("t0ken-123") as good:
        for path in ("/v1/status", "/v1/status/local", "/v1/policy"):
            assert anon.get(path).status_code == 401
        docs = anon.get("/docs")  # the Swagger UI and its spec carry no data: open by default
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "/v1/rank" in anon.get("/openapi.json").json()["paths"]
        assert anon.get("/docs/oauth2-redirect").status_code == 200
        r = anon.post("/v1/rank", json=request)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert wrong.post("/v1/rank", json=request).status_code == 401
        assert good.post("/v1/rank", json=request).status_code == 200
        assert good.get("/v1/status").status_code == 200
        assert anon.get("/healthz").status_code == 200  # open by default, like /metrics
        assert anon.get("/metrics").status_code == 200


def test_open_endpoints_are_configurable(tmp_path: Path, servers: list[Serve]) -> None:
    """Opening /v1/status opens each destination's view too; [] protects even the docs."""
    config = tmp_path / "config.yml"
    dests = [{"id": "local", "scheduler": "node", "host": "local"}]
    serve_block = {"token": "t0ken", "open_endpoints": ["/v1/status"]}
    write_config(config, {"serve": serve_block, "destinations": dests})
    server = start_serve(tmp_path, config, "--database", str(tmp_path / "s.db"), "--no-collect")
    servers.append(server)
    with server.client() as anon:
        assert anon.get("/v1/status").status_code == 200
        assert anon.get("/v1/status/local").status_code == 200
        assert anon.get("/v1/status/nope").status_code == 404
        for path in ("/docs", "/openapi.json", "/healthz", "/metrics"):
            assert anon.get(path).status_code == 401, path
        write_config(config, {"serve": {**serve_block, "open_endpoints": []}, "destinations": dests})
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: anon.get("/v1/status/local").status_code == 401, 10, "the reload")
        assert anon.get("/docs").status_code == 401
    assert server.stop() == 0


# --- the collect loop dies ----------------------------------------------------------------------


def test_healthz_turns_503_when_collect_cycles_fail(tmp_path: Path, servers: list[Serve]) -> None:
    """Another tool damages the schema under the running service: every collect write fails from then on."""
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 0.3},
            "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
        },
    )
    db = tmp_path / "state.db"
    server = start_serve(tmp_path, config, "--database", str(db))
    servers.append(server)
    with server.client() as http:
        wait_for(lambda: http.get("/healthz").status_code == 200, 30, "a healthy service")
        with sqlite3.connect(db, timeout=10) as conn:
            # Reads still work, every collect's write fails (as a damaged schema would make it).
            conn.execute(
                "CREATE TRIGGER frozen BEFORE INSERT ON collect_run BEGIN SELECT RAISE(ABORT, 'frozen'); END"
            )

        def unhealthy() -> bool:
            return http.get("/healthz").status_code == 503

        wait_for(unhealthy, 30, "/healthz to fail")
        body = http.get("/healthz").json()
        assert body["status"] == "unavailable"
        assert "collect cycle failed" in body["reason"] and "frozen" in body["reason"]
        assert metric_values(http.get("/metrics").text)[("metasched_collect_loop_up", ())] == 0
        # Reads still work: ranking goes on from the last good state.
        assert (
            http.post(
                "/v1/rank", json={"job": {"tool_id": "t"}, "destinations": [{"id": "local"}]}
            ).status_code
            == 200
        )
    assert server.stop() == 0
    assert "collect cycle failed: IntegrityError: frozen" in server.text()


@pytest.mark.parametrize("table", ["setting", "node", "collect_run"])
def test_healthz_503_when_the_store_is_unreadable(tmp_path: Path, servers: list[Serve], table: str) -> None:
    """Any table `status` or rank reads: /healthz must not say ok while /v1/status/DEST gives a 500."""
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 3600, "jitter": 0},
            "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
        },
    )
    db = tmp_path / "state.db"
    server = start_serve(tmp_path, config, "--database", str(db), "--no-collect")
    servers.append(server)
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute(f"DROP TABLE {table}")
        r = http.get("/healthz")
        assert r.status_code == 503 and "store unreadable" in r.json()["reason"]
        assert table in r.json()["reason"]


# --- signals --------------------------------------------------------------------------------------


def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    tmp_path: Path, local_config: Path, servers: list[Serve]
) -> None:
    server = start_serve(tmp_path, local_config, "--database", str(tmp_path / "s.db"))
    servers.append(server)
    with server.client() as http:
        wait_for(lambda: http.get("/v1/status").json()[0]["last_success"] is not None, 30, "a collect")
    body = json.dumps(
        {"job": {"tool_id": "t", "cores": 1}, "destinations": [{"id": "local"}, {"id": "other"}]}
    ).encode()
    head = (
        f"POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body[:10])  # the request is in flight: headers in, body still coming
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)

        def refusing() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except OSError:
                return True
            return False

        wait_for(refusing, 10, "the listening socket to close")
        assert server.proc.poll() is None  # still finishing our request
        sock.sendall(body[10:])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200"), answer
    payload = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert set(payload["sorted_destinations"]) == {"local", "other"}
    assert server.proc.wait(30) == 0
    log = server.text()
    assert "shutting down" in log and "stopped" in log and "Traceback" not in log


def test_sigterm_lets_a_running_collect_finish(
    tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, servers: list[Serve]
) -> None:
    """A cycle whose `sinfo` takes 3 s is under way when SIGTERM comes: it completes and is stored."""
    wrap = Path(tempfile.mkdtemp(prefix="metasched-slow-"))
    wrap.chmod(0o755)  # mstest runs the wrapper
    slow = wrap / "sinfo"
    slow.write_text('#!/bin/bash\nsleep 3\nexec /usr/bin/sinfo "$@"\n')
    slow.chmod(0o755)
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 3600, "jitter": 0},
            "destinations": [
                {
                    "id": "slow",
                    "scheduler": "slurm",
                    "host": sshd.host,
                    "port": sshd.port,
                    "user": sshd.user,
                    "key_file": str(sshd.key_file),
                    "known_hosts": str(sshd.known_hosts),
                    "command_timeout": 20,
                    "env": {**slurm.env, "PATH": f"{wrap}:{BASE_PATH}"},
                }
            ],
        },
    )
    db = tmp_path / "state.db"
    server = start_serve(tmp_path, config, "--database", str(db))
    servers.append(server)
    time.sleep(0.5)  # the first cycle starts with the service; its sinfo is sleeping now
    assert server.stop() == 0
    log = server.text()
    assert log.index("waiting for a running collect to finish") < log.index("collect cycle: 1 ok, 0 failed")
    with Store.open(str(db)) as store:
        (summary,) = store.summaries(["slow"])
    assert summary.reachable and summary.last_success is not None and summary.nodes_total >= 3
    slow.unlink()
    wrap.rmdir()


def test_sighup_reloads_a_good_config_and_keeps_the_old_on_a_bad_one(
    tmp_path: Path, servers: list[Serve]
) -> None:
    config = tmp_path / "config.yml"
    first = {
        "collect": {"interval": 3600, "jitter": 0},
        "destinations": [{"id": "a", "scheduler": "node", "host": "local"}],
    }
    write_config(config, first)
    server = start_serve(tmp_path, config, "--database", str(tmp_path / "s.db"), "--no-collect")
    servers.append(server)
    with server.client() as anon, server.client("secret-2") as authed:
        assert [r["id"] for r in anon.get("/v1/status").json()] == ["a"]

        second = {
            **first,
            "serve": {"token": "secret-2"},
            "destinations": [*first["destinations"], {"id": "b", "scheduler": "node", "host": "local"}],
        }
        write_config(config, second)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: anon.get("/v1/status").status_code == 401, 10, "the new token to apply")
        assert [r["id"] for r in authed.get("/v1/status").json()] == ["a", "b"]

        config.write_text("destinations:\n  - id: c\n    scheduler: pbs\n    host: local\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in server.text(), 10, "the refusal in the log")
        assert "destinations[0].scheduler" in server.text()
        assert [r["id"] for r in authed.get("/v1/status").json()] == ["a", "b"]  # old config kept
        assert anon.get("/v1/status").status_code == 401
        assert authed.get("/healthz").status_code == 200
    assert server.stop() == 0


# --- command line ---------------------------------------------------------------------------------


def test_serve_help_lists_the_seed_options(tmp_path: Path) -> None:
    r = cli(["serve", "--help"], {**base_env(tmp_path), "COLUMNS": "200"})
    assert r.returncode == 0
    text = r.stdout.decode()
    for option in (
        "--host",
        "--port",
        "--database-file",
        "--ssh-key-file",
        "--ssh-user",
        "--config",
        "--no-collect",
    ):
        assert option in text


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("serve:\n  port: 99999\n  open_endpoints: [/secret]\n")
    r = cli(["serve", "--config", str(config)], base_env(tmp_path))
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "serve.port" in err and "serve.open_endpoints[0]" in err


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_exits_1_with_a_message(tmp_path: Path, workers: int) -> None:
    """The port is bound before anything starts: no worker, no collect loop."""
    config = write_config(
        tmp_path / "config.yml", {**LOCAL_CONFIG, "serve": {**LOCAL_CONFIG["serve"], "workers": workers}}
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli(
            ["serve", "-c", str(config), "--database", str(tmp_path / "s.db"), "--port", str(port)],
            base_env(tmp_path),
        )
    assert r.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in r.stderr.decode()
    assert "collect loop" not in r.stderr.decode()


def test_collect_loop_respects_the_lock_of_another_collect(tmp_path: Path, servers: list[Serve]) -> None:
    """While another process (here: this test, as the timer's `metasched collect` would) holds the
    collect lock, serve's cycles are skipped, not run alongside; once it is released they run again."""
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 0.3, "lock_timeout": 0.2},
            "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
        },
    )
    db = tmp_path / "state.db"
    Store.open(str(db)).close()
    with CollectLock(lock_path(str(db)), timeout=5):
        server = start_serve(tmp_path, config, "--database", str(db))
        servers.append(server)
        with server.client() as http:

            def skipped() -> float:
                return metric_values(http.get("/metrics").text).get(
                    ("metasched_collect_cycles_total", (("result", "skipped"),)), 0
                )

            wait_for(lambda: skipped() >= 2, 30, "skipped cycles")
            assert http.get("/healthz").status_code == 200  # another process collecting is healthy
            assert http.get("/v1/status").json()[0]["last_success"] is None
    with server.client() as http:
        wait_for(lambda: http.get("/v1/status").json()[0]["last_success"] is not None, 30, "a cycle")
    assert server.stop() == 0
    assert "collect cycle skipped: collect already running" in server.text()


def test_rank_follows_the_store_at_once_on_sqlite_and_postgresql(
    tmp_path: Path, store_url: str, servers: list[Serve]
) -> None:
    """Whichever backend: serve answers as the CLI does, and a change another process commits (here a
    `metasched disable`) shows in the very next answer (the SQLite read cache is keyed on data_version)."""
    from datetime import UTC, datetime

    from metasched.domain.jobs import Node, Snapshot

    now = datetime.now(UTC)
    with Store.open(store_url) as store:
        for i, cores in enumerate((4, 16, 64)):
            nodes = [Node(f"n{i}", "idle", True, cores, mem_total_mb=64_000)]
            store.write_snapshot(f"d{i}", Snapshot(nodes), run_id="r", started=now, finished=now)
    config = write_config(
        tmp_path / "config.yml", {"destinations": [{"id": "d0", "scheduler": "node", "host": "local"}]}
    )
    env = {**base_env(tmp_path), "METASCHED_CONFIG": str(config), "METASCHED_DATABASE": store_url}
    server = start_serve(tmp_path, config, "--database", store_url, "--no-collect", env=env)
    servers.append(server)
    request = {"job": {"tool_id": "t", "cores": 8}, "destinations": [{"id": f"d{i}"} for i in range(3)]}
    body = json.dumps(request).encode()
    with server.client() as http:

        def ranked() -> dict[str, Any]:
            r = http.post("/v1/rank", content=body)
            assert r.status_code == 200, r.text
            return r.json()

        first = ranked()
        assert same_moment(first) == same_moment(json.loads(cli(["rank"], env, stdin=body).stdout))
        assert same_moment(ranked()) == same_moment(first)  # the cached read gives the same answer
        assert cli(["disable", "d2", "--reason", "power work"], env).returncode == 0
        entry = next(r for r in ranked()["ranked"] if r["id"] == "d2")
        assert not entry["feasible"] and any("power work" in reason for reason in entry["reasons"])
        assert cli(["enable", "d2"], env).returncode == 0
        assert next(r for r in ranked()["ranked"] if r["id"] == "d2")["feasible"]
    assert server.stop() == 0


def test_a_storm_of_sighups_is_coalesced_and_sigterm_still_stops(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """200 SIGHUPs in a tight loop while requests flow: signals only schedule a reload, reloads run one at
    a time and coalesce, so the server keeps answering, applies the last config and stops on SIGTERM."""
    config = tmp_path / "config.yml"
    first = {
        "collect": {"interval": 3600, "jitter": 0},
        "destinations": [{"id": "a", "scheduler": "node", "host": "local"}],
    }
    write_config(config, first)
    server = start_serve(tmp_path, config, "--database", str(tmp_path / "s.db"), "--no-collect")
    servers.append(server)
    answered: list[int | str] = []
    done = threading.Event()

    def traffic() -> None:
        with server.client() as http:
            while not done.is_set():
                try:
                    r = http.get("/healthz", timeout=10)
                    answered.append(r.status_code if r.status_code == 200 else f"{r.status_code} {r.text}")
                except httpx.HTTPError as exc:
                    answered.append(repr(exc))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_for(lambda: len(answered) > 0, 30, "requests to flow")
        for i in range(200):
            server.proc.send_signal(signal.SIGHUP)
            if i == 100:
                write_config(
                    config, {**first, "destinations": [{"id": "b", "scheduler": "node", "host": "local"}]}
                )
        last = {**first, "destinations": [{"id": "c", "scheduler": "node", "host": "local"}]}
        write_config(config, last)
        server.proc.send_signal(signal.SIGHUP)
        with server.client() as http:
            wait_for(lambda: [r["id"] for r in http.get("/v1/status").json()] == ["c"], 30, "the last config")
            assert http.get("/healthz").status_code == 200
            seen = len(answered)
            wait_for(lambda: len(answered) > seen + 5, 30, "requests to go on flowing")
    finally:
        done.set()
        worker.join(30)
    assert answered and set(answered) == {200}, (set(answered), server.text()[-3000:])
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.text()
    assert server.text().count("config reloaded from") < 200  # coalesced, not one reload per signal


def test_an_internal_error_is_a_500_and_one_log_line(tmp_path: Path, servers: list[Serve]) -> None:
    """Another tool drops the `node` table: the detail view fails inside serve. The client gets a JSON
    500 naming the exception type; journald gets one line, no traceback (that needs -vv)."""
    from datetime import UTC, datetime

    from metasched.domain.jobs import Node, Snapshot

    db = tmp_path / "state.db"
    now = datetime.now(UTC)
    with Store.open(str(db)) as store:
        store.write_snapshot(
            "d0", Snapshot([Node("n0", "idle", True, 4)]), run_id="r", started=now, finished=now
        )
    config = write_config(
        tmp_path / "config.yml", {"destinations": [{"id": "d0", "scheduler": "node", "host": "local"}]}
    )
    server = start_serve(tmp_path, config, "--database", str(db), "--no-collect")
    servers.append(server)
    with server.client() as http:
        assert http.get("/v1/status/d0").status_code == 200
        before = server.text().splitlines()
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("DROP TABLE node")
        r = http.get("/v1/status/d0")
        assert r.status_code == 500
        assert r.json() == {"detail": "internal error: OperationalError"}
        assert http.get("/ping").status_code == 200  # the server goes on
        added = server.text().splitlines()[len(before) :]
    assert len(added) == 1, added
    assert "internal error on GET /v1/status/d0: OperationalError: no such table: node" in added[0]
    assert server.stop() == 0
    assert "Traceback" not in server.text() and "Exception in ASGI application" not in server.text()


def test_collect_health_and_errors_come_from_the_store_with_no_collect(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """serve --no-collect beside the timer's `metasched collect` (here run by the test): error counts,
    durations and /healthz follow what the other process recorded in the store."""
    from datetime import UTC, datetime, timedelta

    from metasched.domain.jobs import Node, Snapshot

    db = tmp_path / "state.db"
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with Store.open(str(db)) as store:  # the timer stopped an hour ago
        store.write_snapshot(
            "local", Snapshot([Node("n0", "idle", True, 4)]), run_id="r0", started=long_ago, finished=long_ago
        )
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 60},
            "ssh": {"connect_timeout": 2},
            "destinations": [
                {"id": "local", "scheduler": "node", "host": "local"},
                {"id": "closed", "scheduler": "node", "host": "127.0.0.1", "port": free_port()},
            ],
        },
    )
    env = {**base_env(tmp_path), "METASCHED_CONFIG": str(config), "METASCHED_DATABASE": str(db)}
    server = start_serve(tmp_path, config, "--no-collect", env=env)
    servers.append(server)
    with server.client() as http:
        r = http.get("/healthz")
        assert r.status_code == 503 and re.search(r"no collect for \d+s", r.json()["reason"]), r.text

        def errors() -> float:
            values = metric_values(http.get("/metrics").text)
            return values[("metasched_destination_collect_errors_total", (("destination", "closed"),))]

        for _ in range(2):
            assert cli(["collect"], env).returncode == 3  # partial: `closed` failed
        assert http.get("/healthz").json() == {"status": "ok"}
        assert errors() == 2
        assert cli(["collect"], env).returncode == 3
        assert errors() == 3  # counted on from the last page, not again from the start
        values = metric_values(http.get("/metrics").text)
        local = (("destination", "local"),)
        assert values[("metasched_destination_collect_errors_total", local)] == 0
        assert values[("metasched_destination_last_collect_duration_seconds", local)] >= 0
        assert values[("metasched_destination_last_success_timestamp_seconds", local)] > long_ago.timestamp()
    assert server.stop() == 0


def test_healthz_503_while_a_collect_cycle_hangs_and_ok_again_after(
    tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, servers: list[Serve]
) -> None:
    """The loop catches every failure of a cycle, so its thread does not die of one; what stops it in
    practice is a cycle that hangs. Here `sinfo` sleeps 5 s within a 60 s command_timeout: past the
    stall limit (lock_timeout + 3 intervals = 2 s) /healthz says the loop stalled, and recovers once
    the cycle ends."""
    wrap = Path(tempfile.mkdtemp(prefix="metasched-hang-"))
    wrap.chmod(0o755)  # mstest runs the wrapper
    (wrap / "sinfo").write_text('#!/bin/bash\nsleep 5\nexec /usr/bin/sinfo "$@"\n')
    (wrap / "sinfo").chmod(0o755)
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 0.5, "lock_timeout": 0.5},
            "destinations": [
                {
                    "id": "hangs",
                    "scheduler": "slurm",
                    "host": sshd.host,
                    "port": sshd.port,
                    "user": sshd.user,
                    "key_file": str(sshd.key_file),
                    "known_hosts": str(sshd.known_hosts),
                    "command_timeout": 60,
                    "env": {**slurm.env, "PATH": f"{wrap}:{BASE_PATH}"},
                }
            ],
        },
    )
    server = start_serve(tmp_path, config, "--database", str(tmp_path / "s.db"))
    servers.append(server)
    try:
        with server.client() as http:
            wait_for(lambda: http.get("/healthz").status_code == 503, 30, "/healthz to see the stall")
            reason = http.get("/healthz").json()["reason"]
            assert re.fullmatch(r"collect loop stalled: cycle running for \d+s \(limit 2s\)", reason), reason
            assert http.get("/ping").status_code == 200  # HTTP is not blocked by the hung cycle
            (wrap / "sinfo").unlink()  # the next cycles are quick
            wait_for(lambda: http.get("/healthz").status_code == 200, 30, "/healthz to recover")
        assert server.stop() == 0
    finally:
        (wrap / "sinfo").unlink(missing_ok=True)
        wrap.rmdir()


def test_the_first_cycle_waits_a_random_share_of_the_interval(tmp_path: Path, servers: list[Serve]) -> None:
    """collect.jitter 0.5 of a 2 s interval: the first cycle starts 0..1 s after serve, as logged."""
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 2, "jitter": 0.5},
            "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
        },
    )
    server = start_serve(tmp_path, config, "--database", str(tmp_path / "s.db"))
    servers.append(server)
    wait_for(lambda: "collect cycle: 1 ok" in server.text(), 30, "the first cycle")
    delay = re.search(r"first collect cycle in (\d+\.\d+)s", server.text())
    assert delay is not None and 0 <= float(delay.group(1)) <= 1.0
    log = server.text()
    assert log.index("first collect cycle in") < log.index("collect cycle: 1 ok")
    assert server.stop() == 0


def test_later_cycles_are_spread_by_the_jitter_as_the_store_timestamps_show(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """collect.jitter 0.5 of a 1 s interval: cycle starts (each run's own timestamp in the store) are
    0.5..1.5 s apart, a standard deviation of ~0.29 s where jitter 0 gives ~0.02 s (timestamp noise,
    measured here up to 0.05 s). Load only lengthens gaps, so a gap 0.15 s short of the interval can
    only come from the jitter's negative share; with 16 gaps, missing one has a chance of ~0.1 %.
    """
    interval, jitter, gaps_wanted = 1.0, 0.5, 16
    config = write_config(
        tmp_path / "config.yml",
        {
            "collect": {"interval": interval, "jitter": jitter},
            "destinations": [{"id": "local", "scheduler": "node", "host": "local"}],
        },
    )
    db = tmp_path / "s.db"
    server = start_serve(tmp_path, config, "--database", str(db))
    servers.append(server)

    def starts() -> list[float]:
        with Store.open(str(db), readonly=True) as store:
            runs = store.runs(limit=100, dest_id="local")
        return sorted(r.started.timestamp() for r in runs if r.ok)

    wait_for(lambda: len(starts()) > gaps_wanted, 90, f"{gaps_wanted + 1} collect cycles")
    assert server.stop() == 0
    times = starts()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval * (1 - jitter) - 0.1, gaps  # never shorter than the jitter allows
    assert min(gaps) < interval - 0.15, gaps
    assert statistics.stdev(gaps) > 0.15, gaps
