"""The placement ledger through `metasched serve` and `metasched status` (issue 9).

A real `metasched serve` (no collect loop) over a real SQLite file: both rank endpoints (``/v1/rank``
and the seed's ``/process_data``) record each answered job, a burst ranked against the same state
spreads over the destinations that can take it, and the in-flight placements show in ``/v1/status``,
``/metrics`` and the `status` command (table and ``--json``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.infra.serve import Serve, base_env, cli, metric_values, start_serve, write_config

CONFIG = {
    "collect": {"interval": 3600, "jitter": 0},
    "destinations": [
        {"id": "a", "scheduler": "node", "host": "local"},
        {"id": "b", "scheduler": "node", "host": "local"},
    ],
}


def request(job_id: int | None, key: str = "job") -> dict[str, Any]:
    """Two request-only-state destinations of 8 free cores each, an 8-core job: one job fills either."""
    job: dict[str, Any] = {"tool_id": "bwa", "cores": 8}
    if job_id is not None:
        job["job_id"] = job_id
    return {
        key: job,
        "destinations": [
            {"id": "a", "tpv_score": 1, "metrics": {"free_cores": 8, "total_cores": 8, "queued": 0}},
            {"id": "b", "metrics": {"free_cores": 8, "total_cores": 8, "queued": 0}},
        ],
    }


def placements(db: Path) -> dict[str, str]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute('SELECT "job_id", "destination" FROM "placement"').fetchall())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Serve, Path, Path]]:
    config = write_config(tmp_path / "config.yml", CONFIG)
    db = tmp_path / "state.db"
    s = start_serve(tmp_path, config, "--database", str(db), "--no-collect")
    yield s, db, config
    s.stop()


def test_both_endpoints_record_and_a_burst_spreads(server: tuple[Serve, Path, Path]) -> None:
    s, db, _ = server
    with s.client() as c:
        first = c.post("/v1/rank", json=request(1))
        assert first.status_code == 200, first.text
        assert first.json()["sorted_destinations"][0] == "a"  # TPV's tag breaks the tie
        # The seed endpoint (ids only) records too; job 1 queued at a makes b the sooner start.
        second = c.post("/process_data", json=request(2, key="job_info"))
        assert second.status_code == 200, second.text
        assert second.json()["sorted_destinations"][0] == "b"
        # Without a job id: ranked as before, nothing recorded.
        anon = c.post("/v1/rank", json=request(None))
        assert anon.status_code == 200 and not anon.json()["warnings"], anon.text
        # Two more of the burst: each destination now has one in flight; they alternate.
        answers = [c.post("/v1/rank", json=request(n)).json() for n in (3, 4)]
    assert placements(db) == {"1": "a", "2": "b", "3": "a", "4": "b"}
    reasons = {r["id"]: r["reasons"] for r in answers[1]["ranked"]}
    assert any("2 jobs (16 cores) placed here since the state was observed" in w for w in reasons["a"])


def test_re_ranking_a_job_replaces_its_entry(server: tuple[Serve, Path, Path]) -> None:
    s, db, _ = server
    with s.client() as c:
        for _ in range(3):
            assert c.post("/v1/rank", json=request(7)).status_code == 200
    assert placements(db) == {"7": "a"}  # never queued behind its own earlier placement


def test_status_and_metrics_show_the_placements_in_flight(
    server: tuple[Serve, Path, Path], tmp_path: Path
) -> None:
    s, db, config = server
    with s.client() as c:
        for n in (11, 12, 13):
            assert c.post("/v1/rank", json=request(n)).status_code == 200
        rows = {r["id"]: r for r in c.get("/v1/status").json()}
        page = c.get("/metrics").text
    assert rows["a"]["ledger"] == {
        "inflight": 2,
        "inflight_cores": 16.0,
        "expired": 0,
        "jobs": 0,
        "queue_error": None,
        "run_error": None,
    }
    assert rows["b"]["ledger"]["inflight"] == 1
    values = metric_values(page)
    assert values[("metasched_ledger_inflight_placements", (("destination", "a"),))] == 2.0
    assert values[("metasched_ledger_inflight_cores", (("destination", "b"),))] == 8.0

    env = base_env(tmp_path)
    done = cli(["status", "--json", "--config", str(config), "--database", str(db)], env)
    assert done.returncode == 0, done.stderr.decode()
    by_id = {r["id"]: r for r in json.loads(done.stdout)}
    assert by_id["a"]["ledger"]["inflight"] == 2 and by_id["b"]["ledger"]["inflight_cores"] == 8.0
    table = cli(["status", "--config", str(config), "--database", str(db)], env)
    assert table.returncode == 0, table.stderr.decode()
    text = table.stdout.decode()
    assert "in flight" in text and "2 (16c)" in text and "1 (8c)" in text
