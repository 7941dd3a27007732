"""Slurm's expected start as a floor on the queue wait, the whole path on the real test cluster.

The ``slurm_backfill`` cluster (tests/infra/slurm.py) runs its backfill scheduler every second with
both live nodes full of 30-minute jobs, a 4-core 1 GB job pending for Resources and a 1-core 100 MB
one behind it: Slurm expects both to start when the first filling job ends. A real
``metasched collect`` stores those estimates in SQLite and a real ``metasched rank`` uses them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.store import Store
from tests.infra.slurm import BackfillJobs, SlurmCluster
from tests.test_rank_cli import metasched_cmd

DEST = "slurm_bf"


def _cli(
    args: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*metasched_cmd(), *args], input=stdin, capture_output=True, env=env, timeout=120, check=False
    )


def _answer(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _expected_starts(cluster: SlurmCluster, job_ids: list[str]) -> dict[str, int]:
    """Each job's StartTime as squeue prints it itself, in epoch seconds (SLURM_TIME_FORMAT=%s)."""
    env = {**os.environ, **cluster.env, "SLURM_TIME_FORMAT": "%s"}
    out = subprocess.run(
        ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %S"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {jid: int(start) for jid, start in (line.split() for line in out.splitlines())}


def _request(cores: int, mem_gb: float) -> bytes:
    # queued_job_s 60: the model alone says ~45 s here (6 cores to free on 8), far below the ~30 minutes
    # Slurm expects, however long the session-wide cluster has been running before this test.
    return json.dumps(
        {
            "job": {"tool_id": "bwa", "cores": cores, "mem": mem_gb},
            "destinations": [{"id": DEST}],
            "options": {"weights": {"queued_job_s": 60}},
        }
    ).encode()


def test_collected_estimate_bounds_the_wait_of_a_job_that_cannot_pass(
    slurm_backfill: tuple[SlurmCluster, BackfillJobs], tmp_path: Path, env: dict[str, str]
) -> None:
    cluster, jobs = slurm_backfill
    db = tmp_path / "state.db"
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": str(db),
                "destinations": [{"id": DEST, "scheduler": "slurm", "host": "local", "env": cluster.env}],
            }
        )
    )
    done = _cli(["collect", "--config", str(config)], env)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    starts = _expected_starts(cluster, [jobs.whole_node, jobs.one_core])
    with Store.open(str(db)) as store:
        stored = store.summaries([DEST])[0].start_estimates
    # Both pending jobs start when the first filling job ends: the 4-core 1 GB one, no smaller and
    # starting no later, adds nothing to the 1-core 100 MB one, so that one is all rank needs.
    assert starts[jobs.whole_node] <= starts[jobs.one_core]
    assert [(e.cores, e.mem_mb, e.gpus, e.start) for e in stored] == [(1, 100, 0, starts[jobs.one_core])]

    # 1 core, 1 GB: no smaller than the pending 1-core 100 MB job, so not before it starts.
    before = time.time()
    ranked = _answer(_cli(["rank", "--config", str(config)], env, _request(1, 1)))["ranked"][0]
    after = time.time()
    remaining = starts[jobs.one_core] - after
    assert remaining > 60  # the filling jobs run for 30 minutes
    queue_s = ranked["components"]["queue_s"]
    assert remaining <= queue_s <= starts[jobs.one_core] - before
    text = " | ".join(ranked["reasons"])
    assert f"Slurm expects pending work ahead to start in {queue_s:,.0f} s (estimated " in text, text
    assert "a job of 1 core, 0.1 GB that this one cannot pass), later than the model's 45 s" in text

    # 1 core, 50 MB: smaller than each pending job in some resource, so it may start before either:
    # no bound, the model's own answer (5 s + 6 cores to free x 60 s / 9).
    small = _answer(_cli(["rank", "--config", str(config)], env, _request(1, 50 / 1024)))["ranked"][0]
    assert small["components"]["queue_s"] == pytest.approx(5 + 6 * 60 / 9, abs=1e-3)
    assert not any("expects" in why for why in small["reasons"]), small["reasons"]
