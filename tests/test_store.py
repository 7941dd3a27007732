"""The state store on real databases: a SQLite file and a real PostgreSQL 15.

``store_url`` runs each test on both; the PostgreSQL server is started and stopped by the fixture.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metasched.domain.destination import MetricRow, PlacementEntry, ToolTimes
from metasched.domain.errors import CollectError, ConfigError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Job, Node, Partition, Snapshot
from metasched.domain.start_estimates import StartEstimate, reduce
from metasched.store import Store, generation, inflight
from metasched.store.models import SCHEMA_VERSION
from metasched.store.placements import record_placement
from metasched.store.rank_reads import tool_times_from_history
from metasched.store.start_estimates import decode, encode

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def write(store: Store, dest: str, snapshot: Snapshot, minute: float, **kw: Any) -> Any:
    return store.write_snapshot(
        dest, snapshot, run_id=f"r{minute}", started=at(minute), finished=at(minute), **kw
    )


def execute_raw(url: str, *statements: str) -> None:
    """Change a database behind the Store's back (older shapes, foreign versions)."""
    if url.startswith("postgresql://"):
        import psycopg

        conn = psycopg.connect(url)
        try:
            with conn, conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()
        return
    with sqlite3.connect(url) as lite:
        for statement in statements:
            lite.execute(statement)
    lite.close()


def index_names(url: str, table: str) -> set[str]:
    if url.startswith("postgresql://"):
        import psycopg

        conn = psycopg.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))
                return {r[0] for r in cur.fetchall()}
        finally:
            conn.close()
    with sqlite3.connect(url) as lite:
        rows = lite.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,))
        names = {r[0] for r in rows}
    lite.close()
    return names


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as s:
        yield s


NODES = (
    Node("n1", "mixed", True, 16, 4, 64000, 16000, None, 2, 1, partitions=("main", "gpu")),
    Node("n2", "idle", True, 8, 0, 32000, 0, 30000, load_1=0.5, load_5=0.25, load_15=0.125),
    Node("n3", "down*", False, 32, 0, 128000, 0, None, 4, 0, reason="Not responding"),
)
PARTITIONS = (
    Partition("main", is_default=True, nodes_total=2, cores_total=24, limits={"MaxTime": "2-00:00:00"}),
    Partition("gpu", state="drain", available=False, nodes_total=1, cores_total=16),
)
JOBS = (
    Job(
        "101",
        RUNNING,
        "main",
        "g5001_bowtie2_alice",
        "galaxy",
        "RUNNING",
        "None",
        4,
        8000,
        0,
        at(-30),
        at(-20),
        "n1",
    ),
    Job(
        "102",
        PENDING,
        "main",
        "g5002_cat1_bob_example_org",
        "galaxy",
        "PENDING",
        "Priority",
        8,
        1000,
        0,
        at(-5),
    ),
    Job("103_[1-4]", PENDING, "main", "array", "carol", "PENDING", "Resources", 2, 0, 0, at(-1)),
    Job("104", HELD, "main", "held", "dave", "PENDING", "JobHeldUser", 16, 0, 0, at(-60)),
    Job("105", OTHER, "gpu", "x|y\tz\\w\nq", "eve", "COMPLETING", "", 1, 0, 1, at(-90), at(-80), "n1"),
)
SNAPSHOT = Snapshot(nodes=NODES, partitions=PARTITIONS, jobs=JOBS)
# Pending jobs with Slurm's expected start (start_estimate, estimated_at), as the adapter parses them.
ESTIMATED = (
    Job("201", PENDING, "main", "big", cores=8, mem_mb=1000, submit_time=at(-5), start_estimate=at(30),
        estimated_at=at(-0.5)),
    Job("202", PENDING, "main", "small", cores=1, mem_mb=100, submit_time=at(-4), start_estimate=at(20),
        estimated_at=at(-0.5)),
    # as big as 201 and due earlier: 202 (smaller, later) already bounds every job it would bound
    Job("203", PENDING, "main", "mid", cores=4, mem_mb=500, submit_time=at(-3), start_estimate=at(10),
        estimated_at=at(-0.5)),
    Job("204", PENDING, "main", "due", cores=1, submit_time=at(-3), start_estimate=at(-1)),  # overdue
    Job("205", PENDING, "main", "no estimate", cores=1, submit_time=at(-2)),
    Job("206", HELD, "main", "later", cores=1, submit_time=at(-2), start_estimate=at(60)),  # a --begin
    Job("207", PENDING, "main", "unknown eval", cores=2, mem_mb=100, gpus=1, submit_time=at(-2),
        start_estimate=at(40)),
)  # fmt: skip


# -- opening ----------------------------------------------------------------------------------------


def test_open_creates_schema_and_reopens(store_url: str) -> None:
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.summaries() == []
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION


def test_sqlite_url_forms_and_pragmas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nested = tmp_path / "a" / "b" / "state.db"
    with Store.open(f"sqlite:///{nested}") as s:  # absolute: sqlite:////abs/path
        s.set_setting("k", "v")
    assert nested.exists()
    monkeypatch.chdir(tmp_path)
    with Store.open("sqlite:///rel/state.db") as s:  # relative: three slashes
        s.set_setting("k", "v")
    assert (tmp_path / "rel" / "state.db").exists()
    with sqlite3.connect(nested) as lite:
        assert lite.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    lite.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "sqlite://host/x.db",
        "postgresql://u@127.0.0.1:notaport/db",
        "postgresql://u@127.0.0.1/",
    ],
)
def test_unusable_urls_name_database(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        Store.open(url)
    assert str(err.value).startswith("database:")


def test_unreachable_postgres_is_a_config_error_without_password() -> None:
    from tests.infra.procs import free_port

    url = f"postgresql://someone:s3cret@127.0.0.1:{free_port()}/db?connect_timeout=2"
    with pytest.raises(ConfigError) as err:
        Store.open(url)
    assert "database: cannot open" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_newer_schema_is_refused(store_url: str) -> None:
    with Store.open(store_url) as s:
        s.set_setting("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(ConfigError) as err:
        Store.open(store_url)
    assert "newer than this metasched" in str(err.value)
    assert str(err.value).startswith("database:")


def test_tables_without_version_are_refused(store_url: str) -> None:
    with Store.open(store_url) as s:
        s.set_setting("schema_version", None)
    with pytest.raises(ConfigError, match="no schema version"):
        Store.open(store_url)


def undo_v8(url: str) -> tuple[str, ...]:
    """Schema v8's placement.seq: the column, its index and the triggers (and sequence) moving it."""
    column = ('DROP INDEX "placement_seq"', 'ALTER TABLE "placement" DROP COLUMN "seq"')
    if url.startswith("postgresql://"):
        return (
            'DROP TRIGGER "placement_seq" ON "placement"',
            "DROP FUNCTION metasched_placement_seq()",
            'DROP SEQUENCE "placement_seq_counter"',
            *column,
        )
    return ('DROP TRIGGER "placement_insert_seq"', 'DROP TRIGGER "placement_update_seq"', *column)


def undo_v7(url: str) -> tuple[str, ...]:
    """Schema v7's state generation: its table and the triggers on the watched tables."""
    if url.startswith("postgresql://"):
        drops = tuple(f'DROP TRIGGER "{t}_state_changed" ON "{t}"' for t in generation.WATCHED)
        return (*drops, "DROP FUNCTION metasched_state_changed()", 'DROP TABLE "state_generation"')
    events = ("insert", "update", "delete")
    drops = tuple(f'DROP TRIGGER "{t}_{e}_state_changed"' for t in generation.WATCHED for e in events)
    return (*drops, 'DROP TABLE "state_generation"')


def state_generation(store: Store) -> int:
    return int(store.db.fetch(generation.SELECT, [])[0][0])


# Undo schema v6 (start estimates), v5 (placement), v4 (tool_history) and v3 (largest-node columns,
# covering tool_key index).
TO_V5 = (
    'ALTER TABLE "job" DROP COLUMN "start_estimate"',
    'ALTER TABLE "job" DROP COLUMN "estimated_at"',
    'ALTER TABLE "destination" DROP COLUMN "start_estimates"',
)
TO_V4 = (*TO_V5, 'DROP TABLE "placement"')
TO_V3 = (*TO_V4, 'DROP TABLE "tool_history"')
TO_V2 = (
    *TO_V3,
    'ALTER TABLE "destination" DROP COLUMN "max_node_cores"',
    'ALTER TABLE "destination" DROP COLUMN "max_node_mem_mb"',
    'ALTER TABLE "destination" DROP COLUMN "max_node_gpus"',
    'DROP INDEX "finished_job_tool_key_destination_id_end_time_queue_s_run_s"',
    'CREATE INDEX "finished_job_tool_key_destination_id_end_time" ON "finished_job" '
    '("tool_key", "destination_id", "end_time")',
)


def test_opening_a_v1_database_migrates_it(store_url: str) -> None:
    """Build the v1 shape (no finished_job.partition, v1 indexes), then open it with this code."""
    with Store.open(store_url) as s:
        s.sync_destinations([("old", "slurm", "h")])
    execute_raw(
        store_url,
        *undo_v8(store_url),
        *undo_v7(store_url),
        *TO_V2,
        'DROP INDEX "finished_job_destination_id_end_time"',
        'DROP INDEX "collect_run_destination_id_started"',
        'ALTER TABLE "finished_job" DROP COLUMN "partition"',
        'CREATE INDEX "job_destination_id" ON "job" ("destination_id")',
        'CREATE INDEX "finished_job_tool_key" ON "finished_job" ("tool_key")',
        'INSERT INTO finished_job (destination_id, job_id, name, "user", galaxy_job_id, tool_key, cores,'
        " mem_mb, submit_time, start_time, end_time, queue_s, run_s) VALUES ('old', '7', 'g1_cat1_u', 'u',"
        " 1, 'cat1_u', 1, 0, '2026-03-01 10:00:00', '2026-03-01 10:01:00', '2026-03-01 10:05:00', 60, 240)",
        "UPDATE setting SET value = '1' WHERE key = 'schema_version'",
    )
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        [old] = s.history("old")
        assert (old.job_id, old.partition, old.queue_s, old.run_s, old.tool_key) == (
            "7",
            "",
            60.0,
            240.0,
            "cat1_u",
        )
        assert s.tool_times("cat1", ["old"])["old"] == ToolTimes(1, 60.0, 240.0)
        # The migrated table takes new history rows with a partition.
        write(s, "old", Snapshot(jobs=[Job("8", RUNNING, "big", "g2_cat1_u", start_time=at(0))]), 0)
        write(s, "old", Snapshot(), 1)
        assert [(h.job_id, h.partition) for h in s.history("old")] == [("8", "big"), ("7", "")]
    finished_indexes = index_names(store_url, "finished_job")
    assert "finished_job_destination_id_end_time" in finished_indexes
    assert "finished_job_tool_key" not in finished_indexes
    assert "job_destination_id" not in index_names(store_url, "job")
    assert "collect_run_destination_id_started" in index_names(store_url, "collect_run")


def test_opening_a_v2_database_migrates_it(store_url: str) -> None:
    """v2 -> v3: the largest-node columns are filled from the stored nodes, so a summary that is still
    fresh keeps its per-node figures; the tool_key index becomes a covering one."""
    with Store.open(store_url) as s:
        finish_jobs(s, "d", [("1", "g1_cat1_u", 1, 2)], 5)
        write(s, "d", SNAPSHOT, 6)
        write(s, "empty", Snapshot(nodes=[NODES[2]]), 6)  # only a down node
    execute_raw(
        store_url,
        *undo_v8(store_url),
        *undo_v7(store_url),
        *TO_V2,
        "UPDATE setting SET value = '2' WHERE key = 'schema_version'",
    )
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        summaries = {x.id: x for x in s.summaries()}
        # n3 (32 cores, 128000 MB, 4 GPUs) is down: the largest available figures are n1's.
        d = summaries["d"]
        assert (d.max_node_cores, d.max_node_mem_mb, d.max_node_gpus) == (16, 64000, 2)
        empty = summaries["empty"]
        assert (empty.max_node_cores, empty.max_node_mem_mb, empty.max_node_gpus) == (None, None, None)
        assert s.tool_times("cat1", ["d"])["d"] == ToolTimes(1, 60.0, 120.0)
    indexes = index_names(store_url, "finished_job")
    assert "finished_job_tool_key_destination_id_end_time_queue_s_run_s" in indexes
    assert "finished_job_tool_key_destination_id_end_time" not in indexes


def test_opening_a_v3_database_fills_the_tool_samples(store_url: str) -> None:
    """v3 -> v4: tool_history is built from the history already stored, so rank keeps its medians."""
    with Store.open(store_url) as s:
        finish_jobs(s, "d", [("1", "g1_cat1_u", 1, 2), ("2", "g2_cat1_v", 3, 4), ("3", "g3_cat10", 9, 9)], 5)
        finish_jobs(s, "e", [("1", "g1_cat1", 5, 6)], 5)
        before = s.tool_times("cat1", ["d", "e"])
    execute_raw(
        store_url,
        *undo_v8(store_url),
        *undo_v7(store_url),
        *TO_V3,
        "UPDATE setting SET value = '3' WHERE key = 'schema_version'",
    )
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert (
            s.tool_times("cat1", ["d", "e"])
            == before
            == {
                "d": ToolTimes(2, 120.0, 180.0),
                "e": ToolTimes(1, 300.0, 360.0),
            }
        )
        assert s.tool_times("cat10", ["d"]) == {"d": ToolTimes(1, 540.0, 540.0)}


def test_opening_a_v4_database_adds_the_placement_ledger(store_url: str) -> None:
    """v4 -> v5: an empty placement table with rank's and calibration's indexes; the rest untouched."""
    from metasched.domain.destination import PlacementEntry
    from metasched.store.placements import record_placement

    with Store.open(store_url) as s:
        finish_jobs(s, "d", [("1", "g1_cat1_u", 1, 2)], 5)
        before = s.tool_times("cat1", ["d"])
    execute_raw(
        store_url,
        *undo_v8(store_url),
        *undo_v7(store_url),
        *TO_V4,
        "UPDATE setting SET value = '4' WHERE key = 'schema_version'",
    )
    assert "placement_state_placed_at" not in index_names(store_url, "placement")
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.tool_times("cat1", ["d"]) == before
        assert s.inflight_placements(["d"], at(0)) == []
        entry = PlacementEntry("42", "d", "cat1", 2.0, 4096.0, 0.0, at(10), 1.5, 60.0, 120.0)
        record_placement(s, entry)
        assert s.inflight_placements(["d"], at(0)) == [entry]
    assert {"placement_state_placed_at", "placement_actual_destination_finished_at"} <= index_names(
        store_url, "placement"
    )
    # The migrated table has the DDL default a fresh one has: reconciliation may insert without a state.
    execute_raw(
        store_url,
        "INSERT INTO placement (job_id, destination, tool_id, cores, mem_mb, gpus, placed_at, "
        "pred_staging_s, pred_queue_s, pred_run_s) VALUES ('43', 'd', 't', 1, 0, 0, "
        "'2026-03-01 12:11:00', 0, 0, 0)",
    )
    with Store.open(store_url) as s:
        assert [e.job_id for e in s.inflight_placements(["d"], at(0))] == ["42", "43"]


def test_opening_a_v5_database_adds_the_start_estimate_columns(store_url: str) -> None:
    """v5 -> v6: jobs and summaries stored before keep reading (no estimates); the next write has them."""
    with Store.open(store_url) as s:
        write(s, "d", SNAPSHOT, 0)
    execute_raw(
        store_url,
        *undo_v8(store_url),
        *undo_v7(store_url),
        *TO_V5,
        "UPDATE setting SET value = '5' WHERE key = 'schema_version'",
    )
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.jobs("d") == list(JOBS)
        [before] = s.summaries(["d"])
        assert before.start_estimates == () and before.jobs_queued == 2
        write(s, "d", Snapshot(jobs=[ESTIMATED[0]]), 1)
        assert s.jobs("d") == [ESTIMATED[0]]
        assert [e.start for e in s.summaries(["d"])[0].start_estimates] == [at(30).timestamp()]


def test_opening_a_v6_database_adds_the_state_generation(store_url: str) -> None:
    """v6 -> v7: the counter row and its triggers; what ranking reads moves it, the ledger does not."""
    with Store.open(store_url) as s:
        write(s, "d", SNAPSHOT, 0)
    execute_raw(
        store_url,
        *undo_v8(store_url),
        *undo_v7(store_url),
        "UPDATE setting SET value = '6' WHERE key = 'schema_version'",
    )
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.jobs("d") == list(JOBS)
        first = state_generation(s)
        record_placement(s, PlacementEntry("42", "d", "t", 1, 100, 0, at(0), 0, 1, 2))
        assert state_generation(s) == first
        write(s, "d", SNAPSHOT, 1)
        after_write = state_generation(s)
        assert after_write > first
        s.set_disabled("d", "maintenance", None)
        assert state_generation(s) > after_write


# -- snapshots ------------------------------------------------------------------------------------


def test_round_trip(store: Store) -> None:
    store.sync_destinations([("slurm_de", "slurm", "head.example.org")])
    result = write(store, "slurm_de", SNAPSHOT, 0)
    assert (result.jobs, result.finished) == (5, 0)
    assert store.nodes("slurm_de") == list(NODES)
    assert store.partitions("slurm_de") == list(PARTITIONS)
    assert store.jobs("slurm_de") == list(JOBS)
    assert all(j.submit_time is None or j.submit_time.tzinfo is not None for j in store.jobs("slurm_de"))
    [summary] = store.summaries()
    assert (summary.id, summary.scheduler, summary.host) == ("slurm_de", "slurm", "head.example.org")
    assert summary.reachable and summary.error is None
    assert summary.last_success == summary.last_attempt == at(0)
    [run] = store.runs()
    assert (run.run_id, run.destination_id, run.ok, run.error) == ("r0", "slurm_de", True, None)


def test_start_estimates_per_job_and_in_the_summary(store: Store) -> None:
    """Each pending job keeps its estimate; the summary keeps the non-dominated ones, latest first."""
    write(store, "d", Snapshot(jobs=ESTIMATED), 0)
    assert store.jobs("d") == list(ESTIMATED)  # per job, aware UTC, exactly as collected
    [s] = store.summaries(["d"])
    # 207's evaluation time is unknown: the collect's own time (at(0)) stands in.
    assert s.start_estimates == (
        StartEstimate(2, 100, 1, at(40).timestamp(), at(0).timestamp()),
        StartEstimate(8, 1000, 0, at(30).timestamp(), at(-0.5).timestamp()),
        StartEstimate(1, 100, 0, at(20).timestamp(), at(-0.5).timestamp()),
    )
    # A snapshot without estimates (SGE, HTCondor, an idle queue) clears them.
    write(store, "d", SNAPSHOT, 1)
    assert store.summaries(["d"])[0].start_estimates == ()


def test_start_estimates_reduction() -> None:
    """Dominance keeps a fresher smaller estimate; the cap keeps the latest; the text round-trips."""
    jobs = [
        Job("1", PENDING, cores=1, start_estimate=at(20), estimated_at=at(-10)),
        Job("2", PENDING, cores=4, start_estimate=at(10), estimated_at=at(-1)),  # fresher: kept
        Job("3", PENDING, cores=4, start_estimate=at(5), estimated_at=at(-10)),  # dominated by 1
        Job("4", PENDING, cores=1, start_estimate=at(20), estimated_at=at(-20)),  # same, staler
        Job("5", PENDING, cores=8, start_estimate=at(20), estimated_at=at(5)),  # clock skew: clamped
    ]
    got = reduce(jobs, at(0))
    assert [(e.cores, e.start, e.estimated_at) for e in got] == [
        (8, at(20).timestamp(), at(0).timestamp()),
        (1, at(20).timestamp(), at(-10).timestamp()),
        (4, at(10).timestamp(), at(-1).timestamp()),
    ]
    assert decode(encode(got)) == tuple(got)
    assert encode([]) is None and decode(None) == () and decode("not json") == () and decode("[[1]]") == ()
    many = [Job(str(i), PENDING, cores=i, start_estimate=at(i)) for i in range(1, 101)]  # none dominated
    capped = reduce(many, at(0), limit=5)
    assert [e.cores for e in capped] == [100, 99, 98, 97, 96]  # the latest starts: the strongest bounds


def test_summary_math(store: Store) -> None:
    write(store, "d", SNAPSHOT, 0)
    [s] = store.summaries(["d"])
    # Capacity over available nodes only (n3 is down): n1 + n2.
    assert (s.cores_total, s.cores_free) == (24, 12 + 8)
    # n1 tracks allocations (64000 - 16000); n2 allocates nothing, so the OS's free memory bounds it.
    assert (s.mem_total_mb, s.mem_free_mb) == (96000, 48000 + 30000)
    assert (s.gpus_total, s.gpus_free) == (2, 1)
    assert (s.nodes_total, s.nodes_unavailable) == (3, 1)
    # Held and "other" jobs are neither queued nor running demand.
    assert (s.jobs_running, s.jobs_queued, s.jobs_held) == (1, 2, 1)
    assert (s.queued_cores, s.running_cores) == (8 + 2, 4)
    # Largest available node per resource (a job runs on one node): n1 for all three here.
    assert (s.max_node_cores, s.max_node_mem_mb, s.max_node_gpus) == (16, 64000, 2)


def test_snapshot_is_replaced_and_destinations_are_independent(store: Store) -> None:
    write(store, "a", SNAPSHOT, 0)
    write(store, "b", Snapshot(nodes=[Node("b1", "idle", True, 2)]), 0)
    smaller = Snapshot(nodes=NODES[:1], partitions=PARTITIONS[:1], jobs=JOBS[:1])
    write(store, "a", smaller, 1)
    assert store.nodes("a") == list(NODES[:1])
    assert store.partitions("a") == list(PARTITIONS[:1])
    assert store.jobs("a") == list(JOBS[:1])
    assert [n.name for n in store.nodes("b")] == ["b1"]
    assert [s.id for s in store.summaries(["b", "nope", "a"])] == ["b", "a"]


def test_unknown_destination_is_created_and_sync_updates(store: Store) -> None:
    write(store, "adhoc", Snapshot(), 0)
    assert [(s.id, s.scheduler, s.host) for s in store.summaries()] == [("adhoc", "", "")]
    store.sync_destinations([("adhoc", "sge", "qmaster"), ("new", "node", "local")])
    store.sync_destinations([("new", "node", "10.0.0.1")])  # "adhoc" is no longer configured: it stays
    assert [(s.id, s.scheduler, s.host) for s in store.summaries()] == [
        ("adhoc", "sge", "qmaster"),
        ("new", "node", "10.0.0.1"),
    ]


def test_failure_keeps_the_previous_snapshot(store: Store) -> None:
    write(store, "d", SNAPSHOT, 0)
    before = (store.nodes("d"), store.partitions("d"), store.jobs("d"), store.summaries(["d"])[0])
    store.record_failure("d", "ssh: connection refused", run_id="r1", started=at(1), finished=at(1.5))
    after = store.summaries(["d"])[0]
    assert (store.nodes("d"), store.partitions("d"), store.jobs("d")) == before[:3]
    assert not after.reachable
    assert after.error == "ssh: connection refused"
    assert after.last_attempt == at(1.5)
    assert after.last_success == at(0)
    unchanged = {"reachable", "error", "last_attempt"}
    for name in type(after).__dataclass_fields__:
        if name not in unchanged:
            assert getattr(after, name) == getattr(before[3], name), name
    assert [(r.ok, r.error, r.duration_s) for r in store.last_runs("d")] == [
        (False, "ssh: connection refused", 30.0),
        (True, None, 0.0),
    ]
    assert store.history("d") == []
    # The next good collect clears the error.
    write(store, "d", SNAPSHOT, 2)
    assert store.summaries(["d"])[0].reachable and store.summaries(["d"])[0].error is None


def test_failure_of_an_unknown_destination_is_recorded(store: Store) -> None:
    store.record_failure("ghost", "no adapter", run_id="r", started=at(0), finished=at(0))
    [s] = store.summaries()
    assert (s.id, s.reachable, s.error, s.last_success) == ("ghost", False, "no adapter", None)


def test_a_failing_write_changes_nothing(store: Store) -> None:
    write(store, "d", SNAPSHOT, 0)
    broken = Snapshot(nodes=[Node("z", "idle", True, 1)], jobs=[Job("1", RUNNING), Job("2", None)])  # type: ignore[arg-type]
    with pytest.raises(CollectError, match="storing the snapshot failed"):  # NOT NULL, whichever backend
        write(store, "d", broken, 1)
    assert store.nodes("d") == list(NODES)
    assert store.jobs("d") == list(JOBS)
    assert store.summaries(["d"])[0].last_success == at(0)
    assert [r.run_id for r in store.runs()] == ["r0"]


def test_duplicate_keys_in_a_snapshot_keep_the_first(store: Store) -> None:
    write(store, "d", Snapshot(nodes=[Node("n", "idle", True, 4), Node("n", "idle", True, 8)]), 0)
    assert [n.cores_total for n in store.nodes("d")] == [4]


# -- finished-job history ---------------------------------------------------------------------------


def test_history_of_vanished_jobs(store: Store) -> None:
    write(store, "d", SNAPSHOT, 0)
    result = write(store, "d", Snapshot(nodes=NODES, jobs=[JOBS[3]]), 2)  # only the held job remains
    assert result.finished == 4  # running, two pending, other-with-start; held stays
    rows = {h.job_id: h for h in store.history("d")}
    assert set(rows) == {"101", "102", "103_[1-4]", "105"}
    ran = rows["101"]
    assert (ran.galaxy_job_id, ran.tool_key, ran.partition) == (5001, "bowtie2_alice", "main")
    assert ran.queue_s == 600.0  # start - submit
    assert ran.run_s == 22 * 60.0  # end (the collect that missed it) - start
    assert ran.end_time == at(2) and ran.start_time == at(-20) and ran.submit_time == at(-30)
    gone_pending = rows["102"]
    assert (gone_pending.galaxy_job_id, gone_pending.tool_key) == (5002, "cat1_bob_example_org")
    assert (gone_pending.queue_s, gone_pending.run_s, gone_pending.start_time) == (None, None, None)
    assert rows["105"].run_s == 82 * 60.0
    # Jobs that stay are not recorded again; nor are jobs that already vanished.
    assert write(store, "d", Snapshot(nodes=NODES, jobs=[JOBS[3]]), 3).finished == 0
    assert len(store.history("d")) == 4


def test_pending_then_running_then_gone(store: Store) -> None:
    job = Job("9", PENDING, name="g9_fastqc_u", submit_time=at(0))
    write(store, "d", Snapshot(jobs=[job]), 0)
    write(
        store,
        "d",
        Snapshot(jobs=[Job("9", RUNNING, name="g9_fastqc_u", submit_time=at(0), start_time=at(3))]),
        4,
    )
    write(store, "d", Snapshot(), 10)
    [h] = store.history("d")
    assert (h.queue_s, h.run_s, h.tool_key) == (180.0, 420.0, "fastqc_u")


def test_history_across_a_long_outage_keeps_queue_but_not_run_time(store: Store) -> None:
    write(store, "d", Snapshot(jobs=[JOBS[0]]), 0)
    store.record_failure("d", "down", run_id="x", started=at(1), finished=at(1))
    write(store, "d", Snapshot(), 24 * 60, max_gap_s=3600)
    [h] = store.history("d")
    assert (h.queue_s, h.run_s) == (600.0, None)


def test_clock_skew_is_clamped(store: Store) -> None:
    write(store, "d", Snapshot(jobs=[Job("1", RUNNING, submit_time=at(5), start_time=at(30))]), 0)
    write(store, "d", Snapshot(), 1)
    [h] = store.history("d")
    assert (h.queue_s, h.run_s) == (25 * 60.0, 0.0)


def test_reappearing_job_is_not_recorded_twice(store: Store) -> None:
    running = Snapshot(jobs=[JOBS[0]])
    write(store, "d", running, 0)
    write(store, "d", Snapshot(), 1)  # missing from one poll
    write(store, "d", running, 2)
    write(store, "d", Snapshot(), 3)
    assert [h.job_id for h in store.history("d")] == ["101"]


def test_many_vanished_jobs_are_recorded_once(store: Store) -> None:
    """Over a thousand history rows at once: on PostgreSQL they go through COPY into a staging table,
    which must still skip the rows already recorded and keep awkward text intact."""
    n = 1500
    awkward = "tab\there\\back\nline"
    running = Snapshot(
        jobs=[
            Job(f"j{k}", RUNNING, "main", f"g{k}_{awkward}", "u", submit_time=at(-10), start_time=at(-5))
            for k in range(n)
        ]
    )
    write(store, "d", running, 0)
    assert write(store, "d", Snapshot(), 1).finished == n
    write(store, "d", running, 2)  # the same jobs (same submit times) again: their rows exist already
    write(store, "d", Snapshot(), 3)
    rows = store.history("d", limit=10 * n)
    assert len(rows) == n
    assert {r.name for r in rows} == {f"g{k}_{awkward}" for k in range(n)}
    assert {r.end_time for r in rows} == {at(1)}
    assert all(r.queue_s == 300.0 and r.run_s == 360.0 for r in rows)


def test_history_and_runs_are_pruned(store: Store) -> None:
    write(store, "d", Snapshot(jobs=[JOBS[0]]), 0)
    write(store, "d", Snapshot(), 1)
    write(store, "other", Snapshot(jobs=[JOBS[0]]), 0)
    write(store, "other", Snapshot(), 1)
    later = 3 * 24 * 60
    write(store, "d", Snapshot(), later, history_days=2)
    assert store.history("d") == []
    assert [r.run_id for r in store.last_runs("d")] == [f"r{later}"]
    assert len(store.history("other")) == 1  # pruning is per destination written


# -- tool times -------------------------------------------------------------------------------------


def finish_jobs(store: Store, dest: str, jobs: list[tuple[str, str, float, float]], minute: float) -> None:
    """Record finished jobs (id, name, queue minutes, run minutes) ending at ``minute``."""
    snap = Snapshot(
        jobs=[
            Job(jid, RUNNING, name=name, submit_time=at(minute - q - r), start_time=at(minute - r))
            for jid, name, q, r in jobs
        ]
    )
    write(store, dest, snap, minute - 0.5)  # runs "now"; gone at the next collect
    write(store, dest, Snapshot(), minute)


def test_tool_times_medians_limit_and_matching(store: Store) -> None:
    # Oldest batch: slow; newest batch: fast. limit=3 must only see the newest three of bowtie2.
    finish_jobs(store, "a", [(f"o{i}", f"g{i}_bowtie2_alice", 50, 500) for i in range(3)], 10)
    finish_jobs(
        store,
        "a",
        [("n1", "g11_bowtie2_alice", 1, 10), ("n2", "g12_bowtie2_bob", 2, 20), ("n3", "g13_bowtie2", 3, 30)],
        20,
    )
    # Not bowtie2: a prefix that is another tool, a name that is not Galaxy's.
    finish_jobs(
        store, "a", [("x1", "g21_bowtie2x_alice", 1000, 1000), ("x2", "bowtie2_alice", 1000, 1000)], 30
    )
    finish_jobs(store, "b", [("b1", "g31_bowtie2_carol", 4, 40)], 10)
    tool = "toolshed.g2.bx.psu.edu/repos/devteam/bowtie2/bowtie2/2.5.0"
    times = store.tool_times(tool, ["a", "b", "c"], limit=3)
    assert times == {
        "a": ToolTimes(3, 120.0, 1200.0),
        "b": ToolTimes(1, 240.0, 2400.0),
        "c": ToolTimes(0, None, None),
    }
    # All six: queues 60, 120, 180, 3000 x3 s -> median (180 + 3000) / 2; runs likewise.
    assert store.tool_times(tool, ["a"], limit=200)["a"] == ToolTimes(6, 1590.0, 15900.0)
    assert store.tool_times("bowtie", ["a"])["a"].count == 0
    assert store.tool_times("bowtie2x", ["a"])["a"] == ToolTimes(1, 60000.0, 60000.0)
    assert store.tool_times("", ["a"]) == {"a": ToolTimes(0, None, None)}


def test_tool_times_prefix_is_bytewise_under_a_linguistic_collation(postgres: str) -> None:
    """Sites' PostgreSQL databases sort linguistically: there "Cat1_u" lies between "cat1_" and "cat1`"."""
    from tests.infra.postgres import create_database, drop_database

    name = "icu_en_us"
    url = create_database(
        postgres, name, "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    )
    try:
        with Store.open(url) as s:
            finish_jobs(
                s, "a", [("1", "g1_cat1_u", 1, 1), ("2", "g2_Cat1_u", 9, 9), ("3", "g3_cat10_u", 9, 9)], 5
            )
            assert s.tool_times("cat1", ["a"])["a"] == ToolTimes(1, 60.0, 60.0)
    finally:
        drop_database(postgres, name)


def test_tool_times_ignore_unknown_parts(store: Store) -> None:
    # A pending job that vanished counts but has no times.
    write(store, "a", Snapshot(jobs=[Job("1", PENDING, name="g1_cat1_u", submit_time=at(0))]), 0)
    write(store, "a", Snapshot(), 1)
    assert store.tool_times("cat1", ["a"])["a"] == ToolTimes(1, None, None)


def test_tool_times_for_a_few_of_many_destinations(store: Store) -> None:
    """Asking for fewer than half of the stored destinations filters by id in SQL; more, here: same answer."""
    for i, dest in enumerate(("a", "b", "c", "d", "e")):
        finish_jobs(store, dest, [(f"{dest}{j}", f"g{j}_cat1_u", i + 1, j + 1) for j in range(4)], 10)
    few = store.tool_times("cat1", ["b", "nope"], limit=3)
    assert few == {"b": ToolTimes(3, 120.0, 180.0), "nope": ToolTimes(0, None, None)}
    most = store.tool_times("cat1", ["b", "c", "d", "nope"], limit=3)
    assert most["b"] == few["b"]
    assert most["d"] == ToolTimes(3, 240.0, 180.0)


def test_tool_times_samples_match_the_history_itself(store: Store) -> None:
    """The per-(destination, tool_key) samples write_snapshot keeps give exactly what the raw history
    gives: several users' keys merged by end time, more jobs than kept, unknown times, pruning."""
    users = ("alice", "bob_example_org", "")

    def name(n: int) -> str:
        user = users[n % 3]
        return f"g{n}_cat1_{user}" if user else f"g{n}_cat1"

    for batch, minute in enumerate((10, 1450, 1452)):
        jobs = [(f"j{batch}_{n}", name(n), 1 + (n * 7) % 13, 1 + (n * 5) % 11) for n in range(90 + batch)]
        finish_jobs(store, "a", jobs, minute)
        finish_jobs(store, "b", jobs[: 10 * (batch + 1)], minute)
        finish_jobs(store, "b", [(f"x{batch}", f"g{batch}_cat10_alice", 99, 99)], minute + 0.7)
    # Pending jobs that vanished: they count, without times.
    write(store, "b", Snapshot(jobs=[Job("p", PENDING, name="g7_cat1_alice", submit_time=at(1454))]), 1454)
    write(store, "b", Snapshot(), 1455)

    def compare() -> None:
        for limit in (1, 2, 3, 50, 91, 150, 200):
            got = store.tool_times("cat1", ["a", "b", "c"], limit=limit)
            assert got == tool_times_from_history(store.db, "cat1", ["a", "b", "c"], limit), limit
        assert store.tool_times("cat10", ["b"]) == tool_times_from_history(store.db, "cat10", ["b"], 200)

    compare()
    assert store.tool_times("cat1", ["a"])["a"].count == 200
    # A collect a day later prunes the first batch (history_days=1): the samples follow.
    write(store, "a", Snapshot(), 1460, history_days=1)
    write(store, "b", Snapshot(), 1460, history_days=1)
    compare()
    assert store.tool_times("cat1", ["a"])["a"].count == 91 + 92


def test_tool_times_over_many_destinations(store: Store) -> None:
    ids = [f"d{i:04d}" for i in range(1200)]  # more than one IN-list chunk
    for dest in ids[::300]:
        finish_jobs(store, dest, [("1", "g1_cat1_u", 1, 2)], 5)
    times = store.tool_times("cat1", ids)
    assert len(times) == 1200
    assert sorted(d for d, t in times.items() if t.count) == ids[::300]


# -- metrics and settings ---------------------------------------------------------------------------


def test_metrics_replace_per_source(store: Store) -> None:
    store.replace_metrics(
        "queue_by_destination",
        [
            MetricRow("queue_by_destination", "a", "queued", 5.0, observed_at=at(-1)),
            MetricRow("queue_by_destination", "b", "queued", 7.0),
        ],
        at(0),
    )
    store.replace_metrics(
        "destination-queue-run-time",
        [
            MetricRow("destination-queue-run-time", "a", "median_queue_s", 30.0, tool_id="cat1"),
            MetricRow("destination-queue-run-time", "a", "median_queue_s", 90.0, tool_id="bowtie2"),
            MetricRow("destination-queue-run-time", "a", "status", text="online"),
        ],
        at(0),
    )
    rows = store.metrics(["a"], "cat1")
    assert {(r.source, r.name, r.tool_id, r.value, r.text) for r in rows} == {
        ("queue_by_destination", "queued", "", 5.0, None),
        ("destination-queue-run-time", "median_queue_s", "cat1", 30.0, None),
        ("destination-queue-run-time", "status", "", None, "online"),
    }
    queued = next(r for r in rows if r.name == "queued")
    assert (queued.observed_at, queued.fetched_at) == (at(-1), at(0))
    assert {r.tool_id for r in store.metrics(["a"])} == {""}
    # Replacing one source drops its old rows and leaves the other source alone.
    store.replace_metrics(
        "queue_by_destination", [MetricRow("queue_by_destination", "b", "queued", 1.0)], at(5)
    )
    assert [(r.destination_id, r.value) for r in store.metrics(["a", "b"]) if r.name == "queued"] == [
        ("b", 1.0)
    ]
    assert len(store.metrics(["a"], "bowtie2")) == 2
    store.replace_metrics("queue_by_destination", [], at(6))
    assert [r.source for r in store.metrics(["a", "b"])] == ["destination-queue-run-time"]


def test_settings(store: Store) -> None:
    assert store.get_setting("policy.x") is None
    store.set_setting("policy.x", "1")
    store.set_setting("policy.x", "2")
    assert store.get_setting("policy.x") == "2"
    store.set_setting("policy.x", None)
    assert store.get_setting("policy.x") is None


# -- concurrency ------------------------------------------------------------------------------------


def test_one_store_shared_by_threads(store: Store) -> None:
    """collect's fan-out: worker threads write their own destinations through one Store."""

    def collect(i: int) -> None:
        jobs = [Job(f"{i}.{k}", PENDING, cores=1) for k in range(200 + i)]
        write(store, f"d{i:02d}", Snapshot(nodes=[Node("n", "idle", True, i + 1)], jobs=jobs), 0)
        store.record_failure(f"f{i:02d}", "boom", run_id="r", started=at(0), finished=at(0))
        store.close()  # this worker thread's connection

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(collect, range(16)))
    summaries = {s.id: s for s in store.summaries()}
    assert len(summaries) == 32
    assert all(summaries[f"d{i:02d}"].jobs_queued == 200 + i for i in range(16))
    assert all(summaries[f"d{i:02d}"].cores_total == i + 1 for i in range(16))
    assert len(store.runs(limit=100)) == 32


def test_two_stores_in_one_process_do_not_mix(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "one.db")) as one, Store.open(str(tmp_path / "two.db")) as two:
        write(one, "a", Snapshot(nodes=[Node("x", "idle", True, 1)]), 0)
        write(two, "b", Snapshot(nodes=[Node("y", "idle", True, 2)]), 0)
        assert [s.id for s in one.summaries()] == ["a"]
        assert [s.id for s in two.summaries()] == ["b"]


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from metasched.domain.jobs import Job, Node, Snapshot
    from metasched.store import Store

    url, rounds = sys.argv[1], int(sys.argv[2])
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    sizes = (8000, 12000)
    with Store.open(url) as store:
        for i in range(rounds):
            n = sizes[i % 2]
            jobs = [Job(str(k), "pending", cores=1) for k in range(n)]
            print("writing", n, flush=True)
            t = t0 + timedelta(minutes=i)
            store.write_snapshot("d", Snapshot(nodes=[Node("n", "idle", True, 4)], jobs=jobs),
                                 run_id=str(i), started=t, finished=t)
    print("done", flush=True)
    """
)


def test_readers_see_whole_snapshots_while_a_writer_runs(store_url: str) -> None:
    """rank/status read while collect writes (another process): always a whole snapshot, never an error."""
    with Store.open(store_url) as reader:
        write(reader, "d", Snapshot(jobs=[Job(str(k), PENDING) for k in range(8000)]), -1)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, "6"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("writing")
        reads = 0
        while proc.poll() is None:
            [summary] = reader.summaries(["d"])
            assert summary.jobs_queued in (8000, 12000)
            assert len(reader.jobs("d")) in (8000, 12000)
            reads += 1
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        assert reads > 0
        assert len(reader.runs(limit=10)) == 7


def test_opening_a_v7_database_adds_placement_seq(store_url: str) -> None:
    """v7 -> v8: entries recorded before read as before (seq 0); every later write, the ledger's or
    reconciliation's, moves the row past every seq before it."""
    entry = PlacementEntry("42", "d", "t", 1, 100, 0, at(0), 0, 1, 2)
    with Store.open(store_url) as s:
        record_placement(s, entry)
    execute_raw(store_url, *undo_v8(store_url), "UPDATE setting SET value = '7' WHERE key = 'schema_version'")
    with Store.open(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert inflight.latest_seq(s.db) == 0
        assert inflight.all_inflight(s.db, 0) == [entry]
        assert s.inflight_placements(["d"], at(0)) == [entry]
        later = PlacementEntry("43", "d", "t", 2, 100, 0, at(5), 0, 1, 2)
        record_placement(s, later)
        record_placement(s, entry)  # ranked again: the same row, written anew
        changed = inflight.changed_since(s.db, 0)  # numbers may skip (a PostgreSQL upsert takes two)
        assert [(job, e) for _, job, e in changed] == [("43", later), ("42", entry)]
        last = changed[-1][0]
        assert last == inflight.latest_seq(s.db) and changed[0][0] < last
        s.db.fetch('UPDATE "placement" SET "state" = \'resolved\' WHERE "job_id" = \'43\' RETURNING 1', [])
        [(moved, job, gone)] = inflight.changed_since(s.db, last)
        assert moved > last and job == "43" and gone is None
        assert inflight.all_inflight(s.db, inflight.latest_seq(s.db)) == [entry]
