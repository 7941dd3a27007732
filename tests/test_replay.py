"""The replay benchmark (bench/replay.py) on a tiny workload: structure and one quality claim.

The ranking goes through a real SQLite store written with ``Store.write_snapshot`` and
``metasched.rank.rank`` in process, as in the benchmark itself. No wall times are asserted.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from metasched.store import Store

JOBS = 150


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "replay.py"
    spec = importlib.util.spec_from_file_location("metasched_bench_replay", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_workload_is_deterministic(replay: ModuleType) -> None:
    a, horizon_a = replay.make_workload(replay.BUILTIN, JOBS, 7)
    b, horizon_b = replay.make_workload(replay.BUILTIN, JOBS, 7)
    assert a == b and horizon_a == horizon_b
    assert sum(1 for j in a if j.tool is not None) == JOBS
    assert a != replay.make_workload(replay.BUILTIN, JOBS, 8)[0]


def test_every_job_placed_once_where_tpv_allows(replay: ModuleType, tmp_path: Path) -> None:
    scn = replay.BUILTIN
    workload, _ = replay.make_workload(scn, JOBS, 1)
    galaxy = {j.id: j for j in workload if j.tool is not None}
    db = tmp_path / "replay.sqlite"
    results = {
        "tpv": replay.replay(scn, workload, lambda dests: replay.tpv_default, "tpv"),
        "metasched": replay.replay(
            scn, workload, lambda dests: replay.MetaschedPolicy(scn, dests, db, 60.0), "metasched", 60.0
        ),
        "oracle": replay.replay(scn, workload, lambda dests: replay.oracle_policy(scn, dests), "oracle"),
    }
    sites = {s.id: s for s in scn.sites}
    for result in results.values():
        ids = Counter(p.job.id for p in result.placed)
        assert set(ids) == set(galaxy) and set(ids.values()) == {1}
        for p in result.placed:
            job, site = p.job, sites[p.site]
            assert any(
                job.cores <= n.cores and job.mem_gb <= n.mem_gb and job.gpus <= n.gpus for n in site.nodes
            )
            assert p.dispatch == job.arrival <= p.ready <= p.start < p.end
        row = replay.summarize(result)
        assert row["p50_s"] <= row["p95_s"]

    # The store learned per-tool history from jobs that left the simulated queues.
    with Store.open(str(db)) as store:
        history = store.history(limit=1000)
        assert history and all(h.tool_key for h in history if h.galaxy_job_id is not None)
        assert {h.destination_id for h in history} <= set(sites)

    # The quality claim the benchmark exists for: ranking by turnaround beats TPV's first choice.
    tpv = replay.summarize(results["tpv"])
    ms = replay.summarize(results["metasched"])
    assert ms["mean_s"] <= tpv["mean_s"]


def test_main_prints_the_table(replay: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main(["--jobs", "60", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("tpv", "random", "metasched", "oracle", "metasched/tpv"):
        assert name in out
