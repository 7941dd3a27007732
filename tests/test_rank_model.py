"""The pure model (no store, no CLI) and property tests over arbitrary valid requests."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from metasched.app.ranking import rank
from metasched.domain.destination import PlacementEntry
from metasched.rank.geo import haversine_km, transfer_s
from metasched.rank.model import Candidate, Dataset, JobSpec, Location, Observed, state_wait
from metasched.rank.request import parse_request
from metasched.rank.score import order, rank_candidates
from metasched.rank.state import inflight_demand
from metasched.settings import Config, SSHSettings
from metasched.settings.weights import Weights

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EMPTY = Config(path=None, database=None, ssh=SSHSettings(), destinations=())


def test_haversine_known_distances() -> None:
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=1)
    assert haversine_km(10, 10, 10, 10) == 0
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088, rel=1e-6)


def test_transfer_grows_with_bytes_and_distance() -> None:
    assert transfer_s(1e9, 0, 100, 2000) == 10.0  # 1 GB at 100 MB/s
    assert transfer_s(1e9, 2000, 100, 2000) == 20.0  # half the throughput at the halving distance
    assert transfer_s(2e9, 100, 100, 2000) > transfer_s(1e9, 100, 100, 2000)


def test_missing_history_everywhere_is_finite_and_neutral() -> None:
    cands = [Candidate(id=str(i), index=i) for i in range(3)]
    out = rank_candidates(JobSpec("t"), [], {}, cands, Weights())
    assert [r.id for r in out.ranked] == ["0", "1", "2"]
    for r in out.ranked:
        assert r.feasible
        assert (r.queue_s, r.run_s) == (Weights().unknown_queue_s, Weights().default_run_s)
        assert math.isfinite(r.score)


def test_tpv_score_is_a_relative_discount() -> None:
    w = Weights(tpv_weight=0.1)
    cands = [Candidate(id="a", index=0, tpv_score=0), Candidate(id="b", index=1, tpv_score=3)]
    out = rank_candidates(JobSpec("t"), [], {}, cands, w)
    assert [r.id for r in out.ranked] == ["b", "a"]
    b = out.ranked[0]
    assert b.score == pytest.approx(b.total_s * (1 - 0.1 * math.tanh(0.3)))


def test_tpv_score_never_beats_a_clearly_faster_destination() -> None:
    """A typical top TPV score (require/prefer products, ~10-12) moves a turnaround by < 10 %."""
    w = Weights()
    slow = Candidate(id="slow", index=0, tpv_score=12, observed=Observed(metric_run_s=1300.0))
    fast = Candidate(id="fast", index=1, tpv_score=0, observed=Observed(metric_run_s=1000.0))
    out = rank_candidates(JobSpec("t"), [], {}, [slow, fast], w)
    assert [r.id for r in out.ranked] == ["fast", "slow"]
    assert out.ranked[1].score >= 0.9 * out.ranked[1].total_s


def test_huge_tpv_score_stays_finite() -> None:
    cands = [Candidate(id="a", index=0, tpv_score=1e300), Candidate(id="b", index=1, tpv_score=-1e300)]
    out = rank_candidates(JobSpec("t"), [], {}, cands, Weights())
    assert all(math.isfinite(r.score) for r in out.ranked)
    assert [r.id for r in out.ranked] == ["a", "b"]


def test_fits_now_is_dispatch_latency() -> None:
    obs = Observed(free_cores=8, free_mem_mb=8192, free_gpus=0, total_cores=8, total_mem_mb=8192)
    assert state_wait(JobSpec("t", cores=8, mem_mb=8192), obs, Weights())[0] == Weights().dispatch_s


def test_unknown_free_resources_are_not_free() -> None:
    assert state_wait(JobSpec("t", cores=1), Observed(), Weights())[0] is None
    obs = Observed(free_cores=None, queued_jobs=0, running_jobs=10)
    seconds, _ = state_wait(JobSpec("t", cores=1), obs, Weights())
    assert seconds == Weights().dispatch_s  # nothing ahead, but not claimed free: no "fits" reason


def test_queued_jobs_take_free_cores_first() -> None:
    """2 free cores with 500 queued ahead is not 'fits now', unlike an idle 64-core destination."""
    w = Weights()
    busy = Observed(free_cores=2, total_cores=64, queued_cores=500, queued_jobs=500)
    idle = Observed(free_cores=64, total_cores=64, queued_cores=0, queued_jobs=0)
    busy_s, why = state_wait(JobSpec("t"), busy, w)
    assert state_wait(JobSpec("t"), idle, w)[0] == w.dispatch_s
    assert busy_s == pytest.approx(w.dispatch_s + 499 * w.queued_job_s / 65)
    assert "499 cores to free" in why


def test_backlog_drains_at_the_destinations_pace_not_this_tools() -> None:
    """The jobs ahead last as long as the destination's typical job, whatever this tool's run time."""
    w = Weights()
    obs = Observed(free_cores=0, total_cores=10, queued_cores=9, dest_run_s=100.0)
    seconds, why = state_wait(JobSpec("t"), obs, w)
    assert seconds == pytest.approx(w.dispatch_s + 10 * 100 / 11)
    assert "typical job here 100 s" in why


def test_known_shortage_is_not_unknown() -> None:
    """free 0, nothing queued, one core: about half a typical run, with a reason."""
    w = Weights()
    seconds, why = state_wait(JobSpec("t"), Observed(free_cores=0, total_cores=1, queued_cores=0), w)
    assert seconds == pytest.approx(w.dispatch_s + w.queued_job_s / 2)
    assert "waits for running work" in why
    gpu = Observed(free_cores=8, free_gpus=0, queued_jobs=0)
    seconds, why = state_wait(JobSpec("t", gpus=1), gpu, w)
    assert seconds == pytest.approx(w.dispatch_s + w.queued_job_s / 2)
    assert "short of GPUs" in why


def test_staging_of_five_tb_in_australia_beats_fifty_gb_in_usa() -> None:
    stores = {"au": Location(-33.9, 151.2), "us": Location(40.7, -74.0)}
    data = [Dataset("1", "au", 5e12), Dataset("2", "us", 50e9)]
    cands = [
        Candidate(id="us", index=0, location=Location(40.7, -74.0)),
        Candidate(id="au", index=1, location=Location(-33.9, 151.2)),
    ]
    out = rank_candidates(JobSpec("t"), data, stores, cands, Weights())
    assert [r.id for r in out.ranked] == ["au", "us"]
    au = out.ranked[0]
    assert (au.local_bytes, au.staged_bytes) == (5e12, 50e9)


# --- property tests ------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=12)
num = st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False))
maybe_num = st.one_of(st.none(), num)


@st.composite
def destination(draw: st.DrawFn, dest_id: str) -> dict[str, Any]:
    d: dict[str, Any] = {"id": dest_id}
    if draw(st.booleans()):
        d["latitude"] = draw(st.floats(-90, 90))
        d["longitude"] = draw(st.floats(-180, 180))
    for key in ("max_accepted_cores", "max_accepted_mem", "max_accepted_gpus", "queued_job_count"):
        value = draw(maybe_num)
        if value is not None:
            d[key] = value
    if draw(st.booleans()):
        d["tpv_score"] = draw(st.one_of(st.integers(-10, 10), st.floats(-1e6, 1e6)))
    if draw(st.booleans()):
        d["metrics"] = {
            "free_cores": draw(num),
            "queued": draw(num),
            "running": draw(num),
            "status": draw(st.sampled_from(["online", "offline", "x"])),
        }
    return d


@st.composite
def request(draw: st.DrawFn) -> dict[str, Any]:
    dest_ids = draw(st.lists(ids, max_size=25, unique=True))
    stores = draw(st.dictionaries(ids, st.tuples(st.floats(-90, 90), st.floats(-180, 180)), max_size=4))
    store_ids = [*stores, "unknown"]
    datasets = draw(
        st.dictionaries(
            ids,
            st.fixed_dictionaries(
                {"object_store_id": st.one_of(st.none(), st.sampled_from(store_ids)), "size": num}
            ),
            max_size=5,
        )
    )
    return {
        "job_info": {"tool_id": draw(ids), "cores": draw(num), "mem": draw(num), "gpus": draw(num)},
        "destinations": [draw(destination(i)) for i in dest_ids],
        "datasets": datasets,
        "objectstores": {k: {"latitude": a, "longitude": b} for k, (a, b) in stores.items()},
    }


@settings(max_examples=200, deadline=None)
@given(request())
def test_sorted_destinations_is_a_permutation_of_the_input(req: dict[str, Any]) -> None:
    result = rank(req, EMPTY, None, NOW)
    ids_in = [d["id"] for d in req["destinations"]]
    assert sorted(result["sorted_destinations"]) == sorted(ids_in)
    assert [r["rank"] for r in result["ranked"]] == list(range(1, len(ids_in) + 1))
    feasible = [r["feasible"] for r in result["ranked"]]
    assert feasible == sorted(feasible, reverse=True)  # every feasible one before every infeasible one
    for r in result["ranked"]:
        for value in r["components"].values():
            assert math.isfinite(value) and value >= -1e300


@settings(max_examples=50, deadline=None)
@given(request())
def test_ranking_is_deterministic(req: dict[str, Any]) -> None:
    assert rank(req, EMPTY, None, NOW) == rank(req, EMPTY, None, NOW)


@given(request())
def test_ranked_in_the_order_policies_rank_in(req: dict[str, Any]) -> None:
    """rank_candidates writes score.order's key inline; policy re-ranking calls it: the same order."""
    parsed = parse_request(req)
    cands = [
        Candidate(d.id, d.index, d.tpv_score, d.location, d.object_store_id) for d in parsed.destinations
    ]
    got = rank_candidates(parsed.job, parsed.datasets, parsed.objectstores, cands, Weights(), False).ranked
    assert list(got) == sorted(got, key=lambda r: order(r.feasible, r.score, r.tpv_score, r.index))


def test_sqlite_path_reads_urls_like_the_store() -> None:
    from pathlib import Path

    from metasched.settings.database_url import sqlite_path

    assert sqlite_path("x.db") == Path("x.db")
    assert sqlite_path("sqlite:///rel/x.db") == Path("rel/x.db")
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_path("~/x.db") == Path("~/x.db").expanduser()
    assert sqlite_path("postgresql://u@h/db") is None


def _summary(**kw: Any) -> Any:
    from metasched.domain.destination import DestinationSummary

    base: dict[str, Any] = dict(
        id="a",
        scheduler="slurm",
        host="h",
        reachable=True,
        last_attempt=NOW,
        last_success=NOW,
        error=None,
        cores_total=64,
        cores_free=10,
        mem_total_mb=1024,
        mem_free_mb=512,
        gpus_total=0,
        gpus_free=0,
        nodes_total=2,
        nodes_unavailable=0,
        jobs_running=5,
        jobs_queued=3,
        jobs_held=0,
        queued_cores=12,
        running_cores=54,
    )
    return DestinationSummary(**{**base, **kw})


def test_observe_precedence_request_then_summary_then_metrics() -> None:
    from datetime import timedelta

    from metasched.domain.destination import MetricRow
    from metasched.rank.request import DestinationRequest, InlineMetrics
    from metasched.rank.state import observe

    rows = [
        MetricRow("q", "a", "queued", value=99, observed_at=NOW),
        MetricRow("q", "a", "running", value=7, observed_at=NOW - timedelta(hours=2)),
        MetricRow("h", "a", "median_run_s", value=50, tool_id=""),
        MetricRow("h", "a", "median_run_s", value=70, tool_id="t"),
        MetricRow("h", "a", "median_run_s", value=1, tool_id="other"),
    ]
    plain = DestinationRequest(id="a", index=0)
    kw: dict[str, Any] = dict(tool_id="t", now=NOW, max_state_age=300, max_metric_age=900)
    obs, stale_state, stale_metrics = observe(plain, _summary(), None, rows, None, **kw)
    assert (obs.queued_jobs, obs.free_cores, obs.metric_run_s) == (3, 10, 70)  # summary beats metrics
    assert (stale_state, stale_metrics) == (False, True)  # the 2-hour-old running count
    asked = DestinationRequest(id="a", index=0, metrics=InlineMetrics(queued=1, free_cores=0))
    obs, _, _ = observe(asked, _summary(), None, rows, None, **kw)
    assert (obs.queued_jobs, obs.queued_cores, obs.free_cores) == (1, None, 0)  # the request beats both
    old = _summary(last_success=NOW - timedelta(hours=1), disabled_reason="x", disabled_until=NOW)
    obs, stale_state, _ = observe(plain, old, None, rows, None, **kw)
    assert stale_state and obs.free_cores is None and obs.queued_jobs == 99  # stale: unknown, metrics fill in
    assert obs.disabled is None  # the disable ended (until == now)


def test_largest_node_decides_feasibility_after_the_totals() -> None:
    """A job runs on one node: totals that fit are not enough. Unknown (None) or unreported (0)
    largest-node figures check nothing; a destination with no GPU at all keeps its totals reason."""
    from metasched.rank.model import MB_PER_GB, infeasibility
    from metasched.rank.request import DestinationRequest
    from metasched.rank.state import observe

    kw: dict[str, Any] = dict(tool_id="t", now=NOW, max_state_age=300, max_metric_age=900)
    plain = DestinationRequest(id="a", index=0)
    nodes = {
        "max_node_cores": 32,
        "max_node_mem_mb": 128 * 1024,
        "max_node_gpus": 2,
        "mem_total_mb": 512 * 1024,
    }
    obs, _, _ = observe(plain, _summary(gpus_total=8, **nodes), None, [], None, **kw)
    assert (obs.max_node_cores, obs.max_node_mem_mb, obs.max_node_gpus) == (32, 128 * MB_PER_GB, 2)
    big = JobSpec("t", cores=48, mem_mb=200 * MB_PER_GB, gpus=4)
    assert infeasibility(big, Candidate(id="a", index=0, observed=obs)) == [
        "needs 48 cores, largest node has 32",
        "needs 200 GB, largest node has 128.0 GB",
        "needs 4 GPUs, largest node has 2",
    ]
    fits = JobSpec("t", cores=32, mem_mb=128 * MB_PER_GB, gpus=2)
    assert infeasibility(fits, Candidate(id="a", index=0, observed=obs)) == []
    unknown = {
        "max_node_cores": None,
        "max_node_mem_mb": 0,
        "max_node_gpus": None,
        "mem_total_mb": 512 * 1024,
    }
    obs, _, _ = observe(plain, _summary(gpus_total=8, **unknown), None, [], None, **kw)
    assert (obs.max_node_cores, obs.max_node_mem_mb, obs.max_node_gpus) == (None, None, None)
    assert infeasibility(big, Candidate(id="a", index=0, observed=obs)) == []
    obs, _, _ = observe(plain, _summary(gpus_total=0, **nodes), None, [], None, **kw)
    assert "needs 4 GPUs > 0 GPUs in service" in infeasibility(big, Candidate(id="a", index=0, observed=obs))


# --- the scheduler's own expected start (Slurm's backfill) -----------------------------------


def _est(cores: int, mem_mb: int, gpus: int, start_s: float, age_s: float) -> Any:
    """A stored estimate ``start_s`` after NOW, computed ``age_s`` before it (epoch seconds, as stored)."""
    from metasched.domain.start_estimates import StartEstimate

    t = NOW.timestamp()
    return StartEstimate(cores, mem_mb, gpus, t + start_s, t - age_s)


def _estimates(*entries: Any, max_age_s: float = 300.0) -> Any:
    from metasched.rank.model import StartEstimates

    return StartEstimates(entries, NOW.timestamp(), max_age_s, "Slurm")


def test_estimate_of_work_the_job_cannot_pass_is_a_floor_on_its_wait() -> None:
    """max(model, bound): a job no smaller than one ahead waits at least until that one starts."""
    from metasched.rank.start_estimate import queue_time

    w = Weights()
    free = Observed(free_cores=8, total_cores=64, queued_cores=0, free_mem_mb=8192)
    job = JobSpec("t", cores=2, mem_mb=2048)
    assert queue_time(job, free, w)[0] == w.dispatch_s
    free.estimates = _estimates(_est(2, 1024, 0, 1234, 40))
    seconds, why = queue_time(job, free, w)
    assert seconds == 1234.0
    assert why == [
        "queue 1,234 s: Slurm expects pending work ahead to start in 1,234 s (estimated 40 s ago; "
        "a job of 2 cores, 1.0 GB that this one cannot pass), later than the model's 5 s (fits in "
        "free resources now, after the queued work (0 queued cores ahead, 8 free on 64 cores))"
    ]
    # Smaller than the job ahead in any one resource: it may start where that one cannot.
    for small in (JobSpec("t", cores=1, mem_mb=2048), JobSpec("t", cores=2, mem_mb=512)):
        assert queue_time(small, free, w) == queue_time(small, replace(free, estimates=None), w)
    gpu = Observed(free_cores=8, estimates=_estimates(_est(1, 0, 1, 900, 5)))
    assert queue_time(JobSpec("t", cores=4), gpu, w)[0] == w.dispatch_s  # needs no GPU: passes
    assert queue_time(JobSpec("t", cores=4, gpus=1), gpu, w)[0] == 900.0


def test_estimate_below_the_model_changes_nothing() -> None:
    """The model already waits longer (a deep backlog): the answer and its reasons are the model's."""
    from metasched.rank.start_estimate import queue_time

    w = Weights()
    backlog = Observed(free_cores=0, total_cores=10, queued_cores=90, dest_run_s=100.0, history_queue_s=50.0)
    plain = queue_time(JobSpec("t"), backlog, w)
    backlog.estimates = _estimates(_est(1, 0, 0, 60, 1))
    assert queue_time(JobSpec("t"), backlog, w) == plain
    assert "expects" not in plain[1][0]


def test_the_latest_start_the_job_cannot_pass_bounds_the_blended_model() -> None:
    """Among the jobs ahead no bigger than this one, the latest expected start bounds the *blended*
    model (history included); a later start of a bigger job, or one due already, does not count."""
    from metasched.rank.start_estimate import blocking_start, queue_time

    w = Weights()
    entries = (
        _est(8, 8192, 0, 5000, 10),  # bigger than the job: passed
        _est(2, 1024, 0, 3000, 20),  # the latest the job cannot pass ...
        _est(2, 1024, 0, 3000, 5),  # ... estimated more recently: reported
        _est(1, 100, 0, 2000, 30),
        _est(1, 100, 0, 0, 30),  # due now: bounds nothing
    )
    job = JobSpec("t", cores=4, mem_mb=4096)
    fresh, stale = blocking_start(job, _estimates(*entries))
    assert fresh is not None and (fresh.wait_s, fresh.age_s, fresh.job) == (3000.0, 5.0, entries[2])
    assert stale is None
    due = blocking_start(JobSpec("t", cores=1, mem_mb=100), _estimates(entries[4]))
    assert due == (None, None)
    state_s = w.dispatch_s + 4 * w.queued_job_s / 65  # 116 s: below the bound on its own
    obs = Observed(free_cores=0, total_cores=64, queued_cores=0, history_queue_s=20_000.0, history_count=5)
    obs.estimates = _estimates(*entries)
    assert queue_time(job, obs, w)[0] == pytest.approx(0.75 * state_s + 0.25 * 20_000.0)  # 5,087 s > 3,000
    obs.history_queue_s = 100.0
    low = 0.75 * state_s + 0.25 * 100.0
    seconds, why = queue_time(job, obs, w)
    assert seconds == 3000.0 > low
    assert "(estimated 5 s ago; a job of 2 cores, 1.0 GB" in why[0]
    assert f"later than the model's {low:,.0f} s" in why[0] and "blended with own median queue" in why[0]


def test_stale_estimates_are_ignored_and_said_only_when_they_would_have_mattered() -> None:
    """Computed longer than max_state_age ago: no bound; a reason names the one that would have
    raised the wait, and nothing is said of stale ones below the answer anyway. Clocks a few seconds
    apart (computed "after" now) read as just estimated."""
    from metasched.rank.start_estimate import queue_time

    w = Weights()
    job = JobSpec("t", cores=4, mem_mb=4096)
    obs = Observed(free_cores=8, total_cores=64, queued_cores=0)
    obs.estimates = _estimates(_est(2, 1024, 0, 3600, 400), _est(1, 100, 0, 600, 10))
    seconds, why = queue_time(job, obs, w)
    assert seconds == 600.0
    assert (
        why[1]
        == "Slurm's expected start in 3,600 s of pending work ahead ignored: estimated 400 s ago > 300 s"
    )
    obs.estimates = _estimates(_est(2, 1024, 0, 3600, 400), max_age_s=600)
    assert queue_time(job, obs, w)[0] == 3600.0  # a longer max_state_age keeps it
    obs.estimates = _estimates(_est(2, 1024, 0, 100, 400), _est(1, 100, 0, 600, 10))
    assert len(queue_time(job, obs, w)[1]) == 1  # the stale one is earlier than the fresh bound
    obs.estimates = _estimates(_est(1, 100, 0, 60, -3))
    assert "(estimated 0 s ago;" in queue_time(job, obs, w)[1][0]


def test_observe_carries_estimates_of_fresh_state_only() -> None:
    """The stored estimates with the request's time and max_state_age; none on a stale summary, none
    when the request's own queue count supersedes the stored queue, none for SGE/HTCondor."""
    from datetime import timedelta

    from metasched.rank.request import DestinationRequest, InlineMetrics
    from metasched.rank.state import observe

    kw: dict[str, Any] = dict(tool_id="t", now=NOW, max_state_age=300, max_metric_age=900)
    plain = DestinationRequest(id="a", index=0)
    stored = (_est(4, 1024, 0, 1800, 40), _est(1, 100, 0, 900, 400))
    obs, _, _ = observe(plain, _summary(start_estimates=stored), None, [], None, **kw)
    assert obs.estimates == _estimates(*stored)
    unnamed = observe(plain, _summary(start_estimates=stored, scheduler=""), None, [], None, **kw)[0]
    assert unnamed.estimates is not None and unnamed.estimates.by == "the scheduler"
    stale = _summary(start_estimates=stored, last_success=NOW - timedelta(seconds=301))
    assert observe(plain, stale, None, [], None, **kw)[0].estimates is None
    asked = DestinationRequest(id="a", index=0, metrics=InlineMetrics(queued=0))
    assert observe(asked, _summary(start_estimates=stored), None, [], None, **kw)[0].estimates is None
    freed = DestinationRequest(id="a", index=0, metrics=InlineMetrics(free_cores=64))
    assert observe(freed, _summary(start_estimates=stored), None, [], None, **kw)[0].estimates is not None
    for sched in ("sge", "htcondor"):
        assert observe(plain, _summary(scheduler=sched), None, [], None, **kw)[0].estimates is None


def test_without_estimates_rank_answers_as_before() -> None:
    """A destination whose summary has no estimates: every component and reason as without the feature."""
    from metasched.rank.request import DestinationRequest
    from metasched.rank.start_estimate import queue_time
    from metasched.rank.state import observe

    kw: dict[str, Any] = dict(tool_id="t", now=NOW, max_state_age=300, max_metric_age=900)
    obs, _, _ = observe(DestinationRequest(id="a", index=0), _summary(), None, [], None, **kw)
    assert obs.estimates is None
    job = JobSpec("t", cores=4, mem_mb=1024)
    out = rank_candidates(job, [], {}, [Candidate(id="a", index=0, observed=obs)], Weights())
    seconds, why = state_wait(job, obs, Weights())
    assert out.ranked[0].queue_s == seconds
    assert queue_time(job, obs, Weights())[1] == [f"queue {seconds:,.0f} s: {why}"]


def test_unknown_location_is_priced_as_any_known_object_store() -> None:
    """A dataset Galaxy cannot locate is at one of the known object stores, each as likely: a
    destination far from all of them pays more for it than one in their midst, its own store is free,
    and without any known store the flat ``unknown_distance_km`` stands."""
    stores = {"eu": Location(50.0, 8.0), "us": Location(40.0, -75.0)}
    ds = [Dataset(id="d1", object_store_id=None, size_bytes=10e9)]
    cands = [
        Candidate(id="eu", index=0, location=Location(50.0, 8.0), object_store_id="eu"),
        Candidate(id="mid", index=1, location=Location(48.0, 2.0)),
        Candidate(id="au", index=2, location=Location(-35.0, 149.0)),
    ]
    by_id = {r.id: r for r in rank_candidates(JobSpec("t"), ds, stores, cands, Weights()).ranked}
    w = Weights()
    au_factor = sum(
        1 + haversine_km(-35.0, 149.0, s.latitude, s.longitude) / w.halving_km for s in stores.values()
    )
    assert by_id["au"].staging_s == pytest.approx(10e9 / (w.bandwidth_mb_s * 1e6) * au_factor / 2)
    assert by_id["eu"].staging_s < by_id["mid"].staging_s < by_id["au"].staging_s
    assert any("equally likely at each of the 2 known object stores" in r for r in by_id["au"].reasons)
    flat = {r.id: r for r in rank_candidates(JobSpec("t"), ds, {}, cands, w).ranked}
    assert flat["au"].staging_s == pytest.approx(transfer_s(10e9, w.unknown_distance_km, 100, w.halving_km))
    assert flat["au"].staging_s == flat["mid"].staging_s
    assert any("assumed 3,000 km" in r for r in flat["au"].reasons)


def test_a_placement_counts_until_an_observation_after_its_predicted_arrival() -> None:
    """Pulsar stages inputs before it submits: a job placed before the last collect but still staging
    then is in no queue that collect saw, so it still counts as queued ahead; one whose predicted
    staging ended before the collect does not (the collect saw it, or reconcile will settle it)."""
    seen = NOW - timedelta(seconds=60)

    def entry(job: str, placed_s_before: float, staging_s: float) -> PlacementEntry:
        return PlacementEntry(
            job, "d", "t", 4, 1000, 0, NOW - timedelta(seconds=placed_s_before), staging_s, 0, 600
        )

    staging = entry("1", 120, 3600)  # placed before the collect, staging for an hour: not in its queue
    arrived = entry("2", 120, 10)  # staged 110 s before the collect: the collect saw it
    newer = entry("3", 30, 0)  # placed after the collect
    assert inflight_demand([staging, arrived, newer], seen, None) == (2, 8.0, 2000.0, 0.0)
    assert inflight_demand([staging, arrived, newer], None, None)[0] == 3
    assert inflight_demand([staging, arrived, newer], seen, "1")[0] == 1  # not queued ahead of itself
