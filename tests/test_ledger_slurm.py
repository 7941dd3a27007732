"""The placement ledger's prediction error on a real collect (issue 9): a real Slurm 22.05 cluster
(its own, so nothing else queues there), the real ``metasched collect``, ``rank`` and ``status``.

A Galaxy-named job is ranked, submitted behind a job that holds its node, and collected while it
queues, while it runs and after it ended; status then shows the job behind that destination's
prediction error, and ``/metrics`` exports the same figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.store import Store
from metasched.store.galaxy import parse_galaxy_job_name
from metasched.store.reconcile import log_error
from tests.infra.env import isolated_env
from tests.infra.procs import wait_for
from tests.infra.slurm import NODE_CPUS, SlurmCluster, start_slurm, stop_slurm

DEST = "slurm"
GALAXY_ID = 7001
JOB_NAME = f"g{GALAXY_ID}_bwa_mem_alice"
TOOL = "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.17.2"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    """An empty cluster: the job queues behind the blocker only, not behind the shared mix."""
    c = start_slurm()
    try:
        yield c
    finally:
        stop_slurm(c)


def metasched(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = isolated_env(home)
    return subprocess.run(
        [sys.executable, "-m", "metasched", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def collect(cfg: Path, home: Path) -> dict[str, Any]:
    res = metasched("collect", "-c", str(cfg), "--json", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def placement(db: Path) -> dict[str, Any]:
    cols = ("state", "destination", "actual_destination", "pred_queue_s", "pred_run_s", "actual_queue_s",
            "actual_run_s", "finished_at")  # fmt: skip
    with Store.open(str(db)) as store:
        rows = store.db.fetch(
            f'SELECT {", ".join(cols)} FROM "placement" WHERE "job_id" = ?', [str(GALAXY_ID)]
        )
    assert len(rows) == 1
    return dict(zip(cols, rows[0], strict=True))


def squeue_times(c: SlurmCluster, job_id: str) -> tuple[datetime, datetime]:
    """(submit, start) as Slurm reports them for a running job."""
    submit, start = c.run(["squeue", "-h", "-j", job_id, "-o", "%V %S"]).split()
    return datetime.fromisoformat(submit), datetime.fromisoformat(start)


def test_prediction_error_from_a_real_collect(cluster: SlurmCluster, tmp_path: Path) -> None:
    assert parse_galaxy_job_name(JOB_NAME) == (GALAXY_ID, "bwa_mem_alice")
    home, db = tmp_path / "home", tmp_path / "state.db"
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "database": str(db),
                "destinations": [{"id": DEST, "scheduler": "slurm", "host": "local", "env": cluster.env}],
            }
        )
    )
    collect(cfg, home)  # the store exists: rank never creates one

    blocker = cluster.sbatch("blocker", cpus=NODE_CPUS, extra=["-w", "n1"], command="sleep 8")
    cluster.wait_state(blocker, "RUNNING")
    req = {"job": {"tool_id": TOOL, "job_id": GALAXY_ID, "cores": NODE_CPUS, "mem": 1},
           "destinations": [{"id": DEST}]}  # fmt: skip
    ranked = metasched("rank", "-c", str(cfg), "--explain", home=home, stdin=json.dumps(req))
    assert ranked.returncode == 0, ranked.stderr
    assert json.loads(ranked.stdout)["sorted_destinations"] == [DEST]
    assert f"note: placement of job {GALAXY_ID} recorded: {DEST}" in ranked.stderr.splitlines()

    job = cluster.sbatch(JOB_NAME, cpus=NODE_CPUS, extra=["-w", "n1"], command="sleep 3")
    cluster.wait_reason(job, "Resources")
    report = collect(cfg, home)  # queued: collect sees the Galaxy job, the entry is resolved
    assert report["ledger"]["resolved"] == 1, report
    entry = placement(db)
    assert (entry["state"], entry["actual_destination"], entry["finished_at"]) == ("resolved", DEST, None)

    cluster.wait_state(job, "RUNNING", timeout=30)
    submit, start = squeue_times(cluster, job)
    collect(cfg, home)  # running: no outcome yet
    assert placement(db)["finished_at"] is None

    wait_for(lambda: job not in cluster.states(), 30, f"job {job} to leave the queue")
    report = collect(cfg, home)  # gone: its history row gives the outcome
    assert report["ledger"]["finished"] == 1, report
    entry = placement(db)
    assert entry["state"] == "resolved" and entry["finished_at"] is not None
    # The queue wait is Slurm's own (start - submit, both from squeue); it waited behind the blocker.
    assert entry["actual_queue_s"] == pytest.approx((start - submit).total_seconds(), abs=1.0)
    assert entry["actual_queue_s"] >= 1.0
    assert entry["actual_run_s"] is not None and entry["actual_run_s"] > 0

    res = metasched("status", "-c", str(cfg), "--json", home=home)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    rows = doc if isinstance(doc, list) else doc["destinations"]
    ledger = next(r for r in rows if r["id"] == DEST)["ledger"]
    queue_error = log_error(entry["pred_queue_s"], entry["actual_queue_s"])
    run_error = log_error(entry["pred_run_s"], entry["actual_run_s"])
    assert ledger == {
        "inflight": 0,
        "inflight_cores": 0.0,
        "expired": 0,
        "jobs": 1,
        "queue_error": round(queue_error, 3),
        "run_error": round(run_error, 3),
    }

    from metasched.serve.metrics import LoopStats, RequestStats, render
    from metasched.store.reconcile import calibration

    with Store.open(str(db)) as store:
        page = render(
            store.summaries(),
            {},
            {},
            LoopStats({}, None, True),
            RequestStats(),
            datetime.now(UTC),
            ledger=calibration(store, [DEST]),
        )
    samples = {  # series with labels -> value, however the exposition writes numbers
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("metasched_ledger_")
    }
    label = f'destination="{DEST}"'
    assert samples[f"metasched_ledger_inflight_placements{{{label}}}"] == 0
    assert samples[f"metasched_ledger_prediction_jobs{{{label}}}"] == 1
    for what, value in (("queue_wait", queue_error), ("run_time", run_error)):
        key = f'metasched_ledger_prediction_error{{{label},what="{what}"}}'
        assert samples[key] == pytest.approx(value, abs=1e-6)
