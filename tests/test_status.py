"""`metasched status`, `disable` and `enable` as real subprocesses over a real SQLite store built through
the Store API: piped (plain text), on a terminal (a pty: colours, --watch redrawing in place), --json,
`status DEST`, and a disable that rank honours."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Partition, Snapshot
from metasched.store import Store
from tests.infra.env import isolated_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A config with three destinations and a store: hpc fresh (with history), old stale, down failing."""
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "rank": {"max_state_age": 300},
                "destinations": [
                    {"id": "hpc", "scheduler": "slurm", "host": "hpc.example.org"},
                    {"id": "old", "scheduler": "node", "host": "local"},
                    {"id": "down", "scheduler": "sge", "host": "sge.example.org"},
                    {"id": "never", "scheduler": "node", "host": "local"},
                ],
            }
        )
    )
    db = tmp_path / "state.db"
    nodes = [
        Node("n1", "mixed", True, 8, 2, 16000, 4000, partitions=("main",)),
        Node("n2", "down*", False, 8, 0, 16000, 0, partitions=("main",), reason="Not responding"),
    ]
    parts = [
        Partition("main", is_default=True, nodes_total=2, cores_total=16, limits={"MaxTime": "1-00:00:00"})
    ]
    now = datetime.now(UTC)  # per test: a module-level clock goes stale while a long suite runs
    submit = now - timedelta(hours=1)
    with Store.open(str(db)) as store:
        # Two snapshots: jobs seen running, then gone, give finished-job history (queue waits 60 s, 180 s).
        first = now - timedelta(minutes=10)
        running = [
            Job("1", RUNNING, "main", cores=1, submit_time=submit, start_time=submit + timedelta(seconds=60)),
            Job(
                "2", RUNNING, "main", cores=1, submit_time=submit, start_time=submit + timedelta(seconds=180)
            ),
        ]
        store.write_snapshot(
            "hpc", Snapshot(nodes, parts, running), run_id="a", started=first, finished=first
        )
        now_jobs = [Job("3", RUNNING, "main", cores=2), Job("4", PENDING, "main", cores=4)]
        last = now - timedelta(seconds=20)
        store.write_snapshot("hpc", Snapshot(nodes, parts, now_jobs), run_id="b", started=last, finished=last)
        stale = now - timedelta(hours=3)
        store.write_snapshot("old", Snapshot([nodes[0]]), run_id="c", started=stale, finished=stale)
        store.record_failure("down", "connection refused", run_id="d", started=now, finished=now)
    return {
        **isolated_env(tmp_path / "home"),
        "METASCHED_CONFIG": str(config),
        "METASCHED_DATABASE": str(db),
        "COLUMNS": "200",
    }


def run(args: list[str], env: dict[str, str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metasched", *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def rows(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = run(["status", "--json"], env)
    assert r.returncode == 0, r.stderr
    return {row["id"]: row for row in json.loads(r.stdout)}


def test_json_rows(env: dict[str, str]) -> None:
    by_id = rows(env)
    assert list(by_id) == ["hpc", "old", "down", "never"]  # config order
    hpc = by_id["hpc"]
    assert hpc["reachable"] and not hpc["stale"] and hpc["nodes_unavailable"] == 1 and hpc["nodes_total"] == 2
    assert hpc["cores_total"] == 8 and hpc["cores_free"] == 6  # available nodes only
    assert hpc["jobs_running"] == 1 and hpc["jobs_queued"] == 1
    assert hpc["median_queue_s"] == 120.0  # median of 60 s and 180 s
    assert by_id["old"]["stale"] and by_id["old"]["reachable"]
    assert not by_id["down"]["reachable"] and by_id["down"]["error"] == "connection refused"
    assert by_id["never"]["last_success"] is None and by_id["never"]["age_s"] is None
    assert all(r["disabled"] is None for r in by_id.values())


def test_plain_text_when_piped(env: dict[str, str]) -> None:
    r = run(["status"], env)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout  # no colour or cursor codes in a pipe
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["destination", "scheduler", "up"]
    assert "median queue" in lines[0] and "nodes unavail" in lines[0]
    table = {line.split()[0]: line for line in lines[1:]}
    assert "STALE" in table["old"] and "STALE" not in table["hpc"]
    assert "connection refused" in table["down"]
    assert "1/2" in table["hpc"] and "2m" in table["hpc"]  # nodes unavailable, median queue 120 s
    assert "never" in table["never"]


def test_one_destination_shows_nodes_and_partitions(env: dict[str, str]) -> None:
    r = run(["status", "hpc"], env)
    assert r.returncode == 0, r.stderr
    assert "n1" in r.stdout and "down*" in r.stdout and "MaxTime=1-00:00:00" in r.stdout
    data = json.loads(run(["status", "hpc", "--json"], env).stdout)
    assert data["destination"]["id"] == "hpc"
    assert [n["name"] for n in data["nodes"]] == ["n1", "n2"]
    assert data["nodes"][1]["available"] is False and data["nodes"][1]["reason"] == "Not responding"
    assert data["partitions"][0]["limits"] == {"MaxTime": "1-00:00:00"}
    missing = run(["status", "nope"], env)
    assert missing.returncode == 2 and "nope" in missing.stderr and missing.stdout == ""


def read_pty(fd: int, until: float) -> bytes:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def spawn_tty(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasched", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"},
        close_fds=True,
    )
    os.close(follower)
    return proc, leader


def test_terminal_table_highlights_stale_and_unreachable(env: dict[str, str]) -> None:
    proc, fd = spawn_tty(["status"], env)
    try:
        out = read_pty(fd, time.monotonic() + 20)
        assert proc.wait(20) == 0
    finally:
        os.close(fd)
    text = out.decode(errors="replace")
    assert "metasched status" in text and "hpc" in text
    assert "\x1b[33m" in text or "\x1b[33;" in text  # yellow: the stale row
    assert "\x1b[31m" in text or "\x1b[31;" in text  # red: the unreachable row


def test_watch_redraws_in_place_on_a_terminal_and_stops_on_ctrl_c(env: dict[str, str]) -> None:
    proc, fd = spawn_tty(["status", "--watch", "0.2"], env)
    try:
        out = read_pty(fd, time.monotonic() + 3)
        proc.send_signal(signal.SIGINT)
        out += read_pty(fd, time.monotonic() + 2)
        assert proc.wait(20) == 0
    finally:
        os.close(fd)
    text = out.decode(errors="replace")
    assert text.count("metasched status") >= 2  # redrawn
    assert "\x1b[2K" in text or "\x1b[1A" in text or "\x1b[A" in text  # cursor moves back over the table
    assert "Traceback" not in text


def test_watch_when_piped_prints_a_table_per_refresh(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasched", "status", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.decode().count("destination  scheduler") >= 2
    assert b"\x1b[" not in out


def test_disable_until_enabled_is_shown_and_ranked_infeasible(env: dict[str, str]) -> None:
    asked = datetime.now(UTC)
    r = run(["disable", "hpc", "--reason", "kernel update", "--until", "2h"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hpc: disabled until ") and "kernel update" in r.stdout
    row = rows(env)["hpc"]
    assert row["disabled"] == "kernel update" and row["disabled_until"] is not None
    until = datetime.fromisoformat(row["disabled_until"].replace("Z", "+00:00"))
    assert timedelta(hours=1.9) < until - asked < timedelta(hours=2.1)
    assert "disabled: kernel update" in run(["status"], env).stdout

    request = json.dumps({"job": {"tool_id": "t"}, "destinations": [{"id": "hpc"}, {"id": "old"}]}).encode()
    ranked = json.loads(run(["rank"], env, stdin=request).stdout)
    hpc = next(r for r in ranked["ranked"] if r["id"] == "hpc")
    assert not hpc["feasible"] and any("kernel update" in reason for reason in hpc["reasons"])
    assert ranked["sorted_destinations"][-1] == "hpc"

    r = run(["enable", "hpc", "--json"], env)
    assert r.returncode == 0 and json.loads(r.stdout) == {
        "id": "hpc",
        "disabled": None,
        "disabled_until": None,
    }
    assert rows(env)["hpc"]["disabled"] is None
    ranked = json.loads(run(["rank"], env, stdin=request).stdout)
    assert next(r for r in ranked["ranked"] if r["id"] == "hpc")["feasible"]


def test_disable_before_the_first_collect_and_until_a_time(env: dict[str, str]) -> None:
    when = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    r = run(["disable", "never", "--until", when.strftime("%Y-%m-%dT%H:%M:%SZ"), "--json"], env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["disabled"] == "disabled by an operator"
    assert datetime.fromisoformat(data["disabled_until"].replace("Z", "+00:00")) == when
    assert rows(env)["never"]["disabled"] == "disabled by an operator"


def test_a_lapsed_disable_is_no_longer_shown(env: dict[str, str]) -> None:
    assert run(["disable", "hpc", "--until", "1s"], env).returncode == 0
    time.sleep(1.5)
    assert rows(env)["hpc"]["disabled"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["disable", "nope"], "no destination 'nope'"),
        (["enable", "nope"], "no destination 'nope'"),
        (["disable", "hpc", "--until", "yesterday"], "--until"),
        (["disable", "hpc", "--until", "2001-01-01T00:00:00Z"], "not in the future"),
    ],
)
def test_disable_mistakes_exit_2(env: dict[str, str], args: list[str], message: str) -> None:
    r = run(args, env)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


@pytest.mark.parametrize("command", ["status", "disable", "enable"])
def test_help(env: dict[str, str], command: str) -> None:
    r = run([command, "--help"], env)
    assert r.returncode == 0
    for option in {"status": ["--watch", "--json", "DEST"], "disable": ["--until", "--reason"], "enable": []}[
        command
    ]:
        assert option in r.stdout
