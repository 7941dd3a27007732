"""The replay benchmark (bench/replay.py) on small workloads: structure, what metasched is shown, and
the quality claims under production's stale state (a collect every 60 simulated seconds).

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

from metasched.domain.jobs import PENDING
from metasched.store import Store

JOBS = 150
QUALITY_JOBS = 300  # ~5 simulated hours with a dozen workflow bursts
QUALITY_SEED = 1
# metasched's mean turnaround over the greedy oracle's, under stale state. Measured at 300 jobs:
# 1.13 on seed 1, 1.05-1.57 over seeds 1-8 (seed 4's 1.57 is two spades bursts on the fat-memory uk
# nodes); the bound leaves room for model changes that do not make the ranking worse.
ORACLE_BOUND = 1.35


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


def test_background_load_is_the_same_for_every_policy(replay: ModuleType) -> None:
    """TPV's baseline is fair: no site starts with a backlog, and the background is part of the
    workload (the same jobs at the same sites whichever policy places the Galaxy jobs)."""
    workload, _ = replay.make_workload(replay.BUILTIN, JOBS, 1)
    background = [j for j in workload if j.tool is None]
    assert background and {j.site for j in background} == {s.id for s in replay.BUILTIN.sites}
    # Steady state from a warm-up, not a queue dumped at time 0: arrivals are spread out.
    at_zero = Counter(j.site for j in background if -60.0 <= j.arrival <= 0.0)
    assert max(at_zero.values(), default=0) <= 3


def test_staging_law_is_not_the_models(replay: ModuleType) -> None:
    """The simulator's transfers follow their own constants: rank cannot know them from its defaults."""
    from metasched.settings.weights import Weights

    w = Weights()
    assert w.halving_km != replay.SIM_HALVING_KM and replay.SIM_SETUP_S > 0
    scn = replay.BUILTIN
    links = {min(s.ingress_mb_s, e) for s in scn.sites for e in scn.egress_mb_s.values()}
    assert len(links) > 2 and w.bandwidth_mb_s not in links


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
        assert row["p50_s"] <= row["p95_s"] and row["co2_g"] > 0
    assert set(results["metasched"].predicted) == set(galaxy)

    # The store learned per-tool history from jobs that left the simulated queues, and holds the
    # sites' carbon intensities as collect caches them from InfluxDB.
    with Store.open(str(db)) as store:
        history = store.history(limit=1000)
        assert history and all(h.tool_key for h in history if h.galaxy_job_id is not None)
        assert {h.destination_id for h in history} <= set(sites)
        carbon = {
            m.destination_id: m.value
            for m in store.metrics(list(sites))
            if m.source == "pulsar_carbon_intensity" and m.name == "carbon_intensity"
        }
        assert carbon == {s.id: s.carbon_g_kwh for s in scn.sites}


def test_start_estimates_only_where_slurm_gives_them(replay: ModuleType) -> None:
    """Pending jobs at Slurm sites carry their planned start, computed at the snapshot's time;
    SGE and HTCondor sites, and --no-start-estimates, give none."""
    scn = replay.BUILTIN
    workload, _ = replay.make_workload(scn, JOBS, 1)
    dests = {s.id: replay.Destination.build(s) for s in scn.sites}
    now = 0.0
    for job in workload:  # TPV's placements until a burst queues at the home cluster
        now = job.arrival
        site = dests[job.site].site if job.tool is None else replay.tpv_candidates(scn, dests, job)[0]
        ready = now if job.tool is None else now + replay.staging_s(job, site, scn)
        dests[site.id].place(job, now, ready, replay.run_time(job, site))
        if any(p.ready <= now < p.start for p in dests["eu_big"].active):
            break
    seen = set()
    for dest in dests.values():
        plans = {str(p.job.id): p.start for p in dest.active}
        for j in dest.snapshot(now).jobs:
            if j.state == PENDING and dest.site.scheduler == "slurm":
                assert j.start_estimate == replay._at(plans[j.job_id]) and j.estimated_at == replay._at(now)
                seen.add(dest.site.id)
            else:
                assert j.start_estimate is None and j.estimated_at is None
        assert all(j.start_estimate is None for j in dest.snapshot(now, start_estimates=False).jobs)
    assert "eu_big" in seen


def test_quality_under_stale_state(replay: ModuleType, tmp_path: Path) -> None:
    """The claims the benchmark exists for, with a collect every 60 s: metasched beats TPV's first
    choice and random, stays within ORACLE_BOUND of the greedy oracle, and its ledger pays."""
    results, _ = replay.run_all(QUALITY_JOBS, QUALITY_SEED, 60.0, tmp_path)
    mean = {r.name: replay.summarize(r)["mean_s"] for r in results}
    assert mean["metasched"] < mean["tpv"]
    assert mean["metasched"] < mean["random"]
    assert mean["metasched"] <= ORACLE_BOUND * mean["oracle"]
    assert mean["metasched"] < mean["no_ledger"]


def test_carbon_weight_trades_turnaround_for_co2(replay: ModuleType, tmp_path: Path) -> None:
    """With rank.weights.carbon_s_per_kg on, metasched's jobs emit less CO2 than with it off."""
    kwargs = {"policies": ("metasched",)}
    off, _ = replay.run_all(JOBS, 2, 60.0, tmp_path, **kwargs)
    on, _ = replay.run_all(JOBS, 2, 60.0, tmp_path, {"carbon_s_per_kg": 14400.0}, **kwargs)
    assert replay.summarize(on[0])["co2_g"] < replay.summarize(off[0])["co2_g"]


def test_main_prints_the_table(replay: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main(["--jobs", "60", "--seed", "3", "--breakdown"]) == 0
    out = capsys.readouterr().out
    for name in ("tpv", "random", "metasched", "no_ledger", "oracle", "metasched/tpv", "co2_g", "pred/act"):
        assert name in out
