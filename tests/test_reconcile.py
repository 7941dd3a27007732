"""Placement ledger outcomes (issue 9): collect's reconciliation and the calibration figures, on real
SQLite files and a real PostgreSQL (``store_url``), through the Store API as collect writes it."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metasched.app.collect import collect_all
from metasched.domain.destination import PlacementEntry
from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Snapshot
from metasched.settings import CollectSettings, Config, DestinationConfig, RankSettings, SSHSettings
from metasched.store import Store
from metasched.store.placements import record_placement
from metasched.store.reconcile import (
    CALIBRATION_JOBS,
    EMPTY,
    WATERMARK_KEY,
    calibration,
    log_error,
    reconcile,
)

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
TTL = 1800.0
NODES = [Node("n1", "idle", True, 8, 0, 16000, 0)]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as s:
        yield s


def place(
    store: Store,
    job_id: str,
    dest: str,
    at: datetime,
    *,
    queue_s: float = 60.0,
    run_s: float = 600.0,
    cores: float = 2.0,
) -> None:
    entry = PlacementEntry(job_id, dest, "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7", cores,
                           4000.0, 0.0, at, 0.0, queue_s, run_s)  # fmt: skip
    record_placement(store, entry, busy_timeout_s=5.0)


def snap(store: Store, dest: str, at: datetime, jobs: Sequence[Job]) -> None:
    store.write_snapshot(
        dest, Snapshot(NODES, [], list(jobs)), run_id=at.isoformat(), started=at, finished=at
    )


def galaxy_job(job_id: str, gid: int, state: str, submit: datetime, start: datetime | None = None) -> Job:
    return Job(
        job_id, state, "main", name=f"g{gid}_bwa_mem_alice", cores=2, submit_time=submit, start_time=start
    )


def run(store: Store, now: datetime, ttl: float = TTL, days: int = 90) -> Any:
    return reconcile(store, now, ttl_s=ttl, history_days=days)


def rows(store: Store) -> dict[str, dict[str, Any]]:
    names = ("job_id", "destination", "state", "actual_destination", "actual_queue_s", "actual_run_s")
    cols = ", ".join(f'"{n}"' for n in (*names, "resolved_at", "finished_at"))
    out = {}
    for row in store.db.fetch(f'SELECT {cols} FROM "placement"', []):
        values = dict(zip((*names, "resolved_at", "finished_at"), row, strict=True))
        out[values["job_id"]] = values
    return out


def test_resolved_when_seen_then_outcome_when_finished(store: Store) -> None:
    place(store, "501", "hpc", T0, queue_s=120.0, run_s=300.0)
    place(store, "502", "hpc", T0)  # never submitted
    assert run(store, T0 + timedelta(seconds=5)).resolved == 0
    assert calibration(store, ["hpc"])["hpc"].inflight == 2

    submit = T0 + timedelta(seconds=10)
    t1 = T0 + timedelta(seconds=60)
    snap(store, "hpc", t1, [galaxy_job("7", 501, PENDING, submit), Job("8", RUNNING, "main", name="g9_x")])
    result = run(store, t1)
    assert (result.resolved, result.elsewhere, result.finished, result.expired) == (1, 0, 0, 0)
    entry = rows(store)["501"]
    assert (entry["state"], entry["actual_destination"], entry["actual_queue_s"]) == ("resolved", "hpc", None)
    assert entry["resolved_at"] is not None and entry["finished_at"] is None
    cal = calibration(store, ["hpc"])["hpc"]
    assert (cal.inflight, cal.inflight_cores, cal.jobs, cal.queue_error) == (1, 2.0, 0, None)

    start = submit + timedelta(seconds=240)  # waited 240 s where 120 s were predicted
    t2 = start + timedelta(seconds=30)
    snap(store, "hpc", t2, [galaxy_job("7", 501, RUNNING, submit, start)])
    assert run(store, t2).finished == 0  # running: no outcome yet
    t3 = start + timedelta(seconds=300)  # ran 300 s (until the collect that missed it), as predicted
    snap(store, "hpc", t3, [])
    result = run(store, t3)
    assert (result.resolved, result.finished) == (0, 1)
    entry = rows(store)["501"]
    assert entry["actual_queue_s"] == 240.0 and entry["actual_run_s"] == 300.0
    assert entry["finished_at"] is not None
    cal = calibration(store, ["hpc", "other"])
    assert cal["hpc"].jobs == 1
    assert cal["hpc"].queue_error == pytest.approx(math.log(2))
    assert cal["hpc"].run_error == pytest.approx(0.0)
    assert cal["other"] == EMPTY
    assert run(store, t3 + timedelta(seconds=60)).finished == 0  # idempotent


def test_a_job_that_went_to_another_destination_is_recorded_there(store: Store) -> None:
    place(store, "601", "fast", T0)
    place(store, "602", "fast", T0)
    t1 = T0 + timedelta(seconds=30)
    snap(store, "fast", t1, [galaxy_job("1", 602, PENDING, T0)])
    snap(store, "slow", t1, [galaxy_job("44", 601, PENDING, T0)])  # TPV fell through to its next candidate
    result = run(store, t1)
    assert (result.resolved, result.elsewhere) == (2, 1)
    by_id = rows(store)
    assert (by_id["601"]["destination"], by_id["601"]["actual_destination"]) == ("fast", "slow")
    assert by_id["602"]["actual_destination"] == "fast"

    start = T0 + timedelta(seconds=40)
    t2 = T0 + timedelta(seconds=90)
    snap(store, "slow", t2, [galaxy_job("44", 601, RUNNING, T0, start)])
    t3 = T0 + timedelta(seconds=400)
    snap(store, "slow", t3, [])
    assert run(store, t3).finished == 1
    assert rows(store)["601"]["actual_run_s"] == 360.0
    # The prediction was about "fast": it is no sample of either destination's error.
    cal = calibration(store, ["fast", "slow"])
    assert cal["fast"].jobs == 0 and cal["slow"].jobs == 0


def test_a_stale_copy_elsewhere_loses_to_the_ranked_destination(store: Store) -> None:
    place(store, "701", "b", T0)
    t1 = T0 + timedelta(seconds=30)
    snap(store, "a", t1, [galaxy_job("1", 701, RUNNING, T0 - timedelta(hours=2), T0 - timedelta(hours=1))])
    snap(store, "b", t1, [galaxy_job("2", 701, PENDING, T0)])
    assert run(store, t1).elsewhere == 0
    assert rows(store)["701"]["actual_destination"] == "b"


def test_never_seen_entries_expire_after_the_ttl_and_are_counted(store: Store) -> None:
    place(store, "801", "hpc", T0)
    place(store, "802", "hpc", T0 + timedelta(seconds=600))
    assert run(store, T0 + timedelta(seconds=TTL - 1)).expired == 0
    result = run(store, T0 + timedelta(seconds=TTL + 1))
    assert result.expired == 1
    assert rows(store)["801"]["state"] == "expired" and rows(store)["802"]["state"] == "inflight"
    cal = calibration(store, ["hpc"])["hpc"]
    assert (cal.inflight, cal.expired) == (1, 1)
    # An expired entry is settled: its job showing up late changes nothing.
    late = T0 + timedelta(seconds=TTL + 60)
    snap(store, "hpc", late, [galaxy_job("3", 801, PENDING, late)])
    assert run(store, late).resolved == 0 and rows(store)["801"]["state"] == "expired"


def test_a_job_seen_only_by_its_history_row_is_resolved_and_completed(store: Store) -> None:
    """The reconciliation after the job's first sighting failed (or never ran): its history row still
    settles the entry."""
    place(store, "901", "hpc", T0)
    start = T0 + timedelta(seconds=20)
    snap(store, "hpc", T0 + timedelta(seconds=30), [galaxy_job("5", 901, RUNNING, T0, start)])
    t2 = T0 + timedelta(seconds=100)
    snap(store, "hpc", t2, [])
    result = run(store, t2)
    assert (result.resolved, result.finished) == (1, 1)
    entry = rows(store)["901"]
    assert (entry["state"], entry["actual_destination"], entry["actual_queue_s"]) == ("resolved", "hpc", 20.0)


def test_a_re_ranked_job_is_not_completed_by_its_earlier_run(store: Store) -> None:
    place(store, "1001", "a", T0)
    start = T0 + timedelta(seconds=5)
    snap(store, "a", T0 + timedelta(seconds=10), [galaxy_job("1", 1001, RUNNING, T0, start)])
    run(store, T0 + timedelta(seconds=10))
    # Galaxy resubmits it: TPV ranks it again (the entry is replaced) and it goes to b.
    again = T0 + timedelta(seconds=50)
    place(store, "1001", "b", again)
    snap(store, "b", again + timedelta(seconds=10), [galaxy_job("9", 1001, PENDING, again)])
    snap(store, "a", again + timedelta(seconds=10), [])  # the first run ended at a
    result = run(store, again + timedelta(seconds=10))
    assert (result.resolved, result.finished) == (1, 0)
    entry = rows(store)["1001"]
    assert (entry["destination"], entry["actual_destination"], entry["finished_at"]) == ("b", "b", None)


def test_an_earlier_run_ending_before_the_new_one_shows_up_does_not_settle_it(store: Store) -> None:
    place(store, "1002", "a", T0)
    start = T0 + timedelta(seconds=5)
    snap(store, "a", T0 + timedelta(seconds=10), [galaxy_job("1", 1002, RUNNING, T0, start)])
    run(store, T0 + timedelta(seconds=10))
    again = T0 + timedelta(hours=1)  # resubmitted after an hour's run; the new job is not queued yet
    place(store, "1002", "b", again)
    snap(store, "a", again + timedelta(seconds=10), [])
    result = run(store, again + timedelta(seconds=10))
    assert (result.resolved, result.finished) == (0, 0)
    assert rows(store)["1002"]["state"] == "inflight"


def test_old_settled_entries_are_pruned_like_history(store: Store) -> None:
    old = T0 - timedelta(days=10)
    place(store, "1101", "hpc", old)  # will expire
    place(store, "1102", "hpc", old)  # resolved
    place(store, "1103", "hpc", T0 - timedelta(days=1))  # resolved, recent
    snap(store, "hpc", old + timedelta(seconds=30), [galaxy_job("1", 1102, PENDING, old)])
    run(store, old + timedelta(seconds=30), days=30)
    snap(store, "hpc", T0 - timedelta(days=1), [galaxy_job("2", 1103, PENDING, T0 - timedelta(days=1))])
    run(store, T0 - timedelta(days=1), days=30)
    assert {k: v["state"] for k, v in rows(store).items()} == {
        "1101": "expired",
        "1102": "resolved",
        "1103": "resolved",
    }
    result = run(store, T0, days=7)
    assert result.pruned == 2
    assert set(rows(store)) == {"1103"}


def test_calibration_is_the_median_over_the_newest_jobs_with_a_one_second_floor(store: Store) -> None:
    """Per job: |ln(pred/actual)| of queue wait and run time, both clamped to >= 1 s. Only the newest
    CALIBRATION_JOBS finished jobs count (older ones were worse here)."""
    t = T0
    for i in range(CALIBRATION_JOBS + 10):
        gid = 2000 + i
        old = i < 10
        place(store, str(gid), "hpc", t, queue_s=0.2 if not old else 1000.0, run_s=100.0)
        start = t + timedelta(seconds=0 if i % 2 else 4)  # queue 0 s or 4 s
        snap(store, "hpc", t + timedelta(seconds=5), [galaxy_job(str(gid), gid, RUNNING, t, start)])
        t_end = start + timedelta(seconds=50 if i % 2 else 200)  # run 50 s or 200 s, 100 s predicted
        snap(store, "hpc", t_end, [])
        run(store, t_end)
        t = t_end + timedelta(seconds=1)
    cal = calibration(store, ["hpc"])["hpc"]
    assert cal.jobs == CALIBRATION_JOBS
    # queue: predicted 0.2 s -> 1 s; actual 0 s -> 1 s (exact) or 4 s (ln 4); half each -> median between
    assert cal.queue_error == pytest.approx((0.0 + math.log(4)) / 2)
    assert cal.run_error == pytest.approx(math.log(2))
    assert calibration(store, ["hpc"], limit=0)["hpc"].jobs == 0
    assert log_error(0.0, 0.5) == 0.0 and log_error(10.0, 0.0) == pytest.approx(math.log(10))


def test_many_destinations_in_one_calibration_read(store: Store) -> None:
    ids = [f"d{i:03d}" for i in range(230)]  # more than one statement's worth
    for i, dest in enumerate(ids):
        place(store, str(3000 + i), dest, T0, run_s=100.0)
        snap(store, dest, T0 + timedelta(seconds=5), [galaxy_job("1", 3000 + i, RUNNING, T0, T0)])
        snap(store, dest, T0 + timedelta(seconds=100), [])
    run(store, T0 + timedelta(seconds=100))
    cal = calibration(store, ids)
    assert list(cal) == ids
    assert all(c.jobs == 1 and c.run_error == pytest.approx(0.0) for c in cal.values())


def test_the_watermark_records_the_last_reconciliation(store: Store) -> None:
    place(store, "4001", "hpc", T0)
    run(store, T0)
    assert store.get_setting(WATERMARK_KEY) == T0.isoformat()


# --- through collect_all ----------------------------------------------------------------------------


def _config(tmp_path: Path) -> Config:
    return Config(
        path=None,
        database=str(tmp_path / "state.db"),
        ssh=SSHSettings(),
        destinations=(DestinationConfig(id="box", scheduler="node", host="local", ssh=SSHSettings()),),
        collect=CollectSettings(),
        rank=RankSettings(ledger_ttl=60.0),
    )


def test_collect_reconciles_and_reports_it(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        place(store, "5001", "box", datetime.now(UTC) - timedelta(seconds=120))
        report = collect_all(_config(tmp_path), store)
        assert report.ok_count == 1 and report.ledger is not None and report.ledger.expired == 1
        assert report.to_dict()["ledger"]["expired"] == 1
        assert calibration(store, ["box"])["box"].expired == 1


def test_a_failed_reconciliation_keeps_the_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        store.close()
    conn = sqlite3.connect(db)
    conn.execute('DROP TABLE "placement"')  # a damaged store: the ledger cannot be read
    conn.commit()
    conn.close()
    with Store.open(str(db)) as store:
        report = collect_all(_config(tmp_path), store)
        assert report.ok_count == 1 and report.exit_code == 0
        assert report.ledger is None
        assert any(w.startswith("ledger: not reconciled: ") and "placement" in w for w in report.warnings)
        assert store.summaries(["box"])[0].last_success is not None
        assert store.nodes("box")
