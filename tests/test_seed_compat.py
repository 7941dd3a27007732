"""Seed users bring their files unchanged: the seed-1 example request, through the real CLI and serve's shape.

``tests/scenarios/rank/seed_example_request1.json`` holds the values of tpv-metascheduler-api's own
``tests/example_request1.json`` (5 TB in Australia, 50 GB in the USA, queue counts on every
destination, a GPU job), in its exact shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SEED = Path(__file__).parent / "scenarios" / "rank" / "seed_example_request1.json"


def rank(request: bytes, home: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASCHED_", "XDG_", "INFLUXDB_"))}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"))
    return subprocess.run(
        [sys.executable, "-m", "metasched", "rank"], input=request, capture_output=True, env=env, timeout=60
    )


def test_seed_request_ranks_every_destination(tmp_path: Path) -> None:
    done = rank(SEED.read_bytes(), tmp_path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    ids = [d["id"] for d in json.loads(SEED.read_text())["destinations"]]
    assert sorted(answer["sorted_destinations"]) == sorted(ids)
    # Unknown GPU capacity is not "no GPUs": nothing is ruled out by the seed's gpus: 1.
    assert all(r["feasible"] for r in answer["ranked"])
    # 5 TB in Australia and 1 TB in Asia are closest to the US west coast; pulsar_us01 also sits on the
    # USA object store (50 GB free to it) and has the shorter queue of the two US sites.
    assert answer["sorted_destinations"][0] == "pulsar_us01"


def test_seed_request_with_every_old_alias(tmp_path: Path) -> None:
    seed = json.loads(SEED.read_text())
    old = {
        "static_objectstores_info": seed["objectstores"],
        "static_dataset_info": seed["datasets"],
        "static_job_info": seed["job_info"],
        "current_dest_info": seed["destinations"],
    }
    done = rank(json.dumps(old).encode(), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        json.loads(done.stdout)["sorted_destinations"]
        == json.loads(rank(SEED.read_bytes(), tmp_path).stdout)["sorted_destinations"]
    )
