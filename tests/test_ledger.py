"""The placement ledger's write path under load and under locks (issue 9), on a real SQLite file (WAL,
as ``Store.open`` makes it) and a real PostgreSQL 15 (``store_url``).

- 10 processes rank at once, 1,000 ranks in all, each opening the store as ``metasched rank`` does
  (``open_existing_store``, read-only, a fresh connection per rank): every rank answers and every
  placement is recorded.
- A writer holding the store's lock: the real ``metasched rank`` answers in the normal shape, exit 0,
  with a warning that the placement was not recorded, before the lock is released.
- No ``job.job_id``: answered, not recorded, ``--explain`` says why; the same job id twice: one entry.
- The write's bounded retry: a lock held past one attempt is waited out by the next; an error that
  is not a lock (a missing table) is not retried.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Snapshot
from metasched.store import Store

PROCESSES = 10
RANKS = 1_000
DESTS = ("hpc", "cloud", "pulsar")
TOOL = "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.17.2"
NOT_RECORDED = "not recorded"
ANSWER_KEYS = {"schema_version", "sorted_destinations", "ranked", "warnings"}


def build_state(url: str) -> None:
    """Each destination collected a minute ago: 8-core nodes, some busy, a few jobs queued."""
    at = datetime.now(UTC) - timedelta(seconds=60)
    with Store.open(url) as store:
        for i, dest in enumerate(DESTS):
            nodes = [Node(f"n{n}", "mixed", True, 8, (n + i) % 8, 32_000, 8_000) for n in range(4)]
            jobs = [
                Job(f"{j}", PENDING if j % 2 else RUNNING, "main", name=f"g{j}_bwa_mem_alice", cores=2)
                for j in range(i * 3)
            ]
            store.write_snapshot(dest, Snapshot(nodes, (), jobs), run_id="r1", started=at, finished=at)


def rank_request(job_id: str | int | None) -> dict[str, Any]:
    job: dict[str, Any] = {"tool_id": TOOL, "cores": 2, "mem": 4}
    if job_id is not None:
        job["job_id"] = job_id
    return {"job": job, "destinations": [{"id": d} for d in DESTS]}


def ledger_rows(url: str) -> list[tuple[Any, ...]]:
    with Store.open(url) as store:
        return store.db.fetch(
            'SELECT "job_id", "destination", "state" FROM "placement" ORDER BY "job_id"', []
        )


def valid_answer(result: dict[str, Any]) -> bool:
    return (
        set(result) == ANSWER_KEYS
        and sorted(result["sorted_destinations"]) == sorted(DESTS)
        and [r["id"] for r in result["ranked"]] == result["sorted_destinations"]
    )


# -- 10 processes, 1,000 ranks ----------------------------------------------------------------


def rank_worker(url: str, job_ids: list[str], barrier: Any, out: str) -> None:
    """One ``metasched rank`` per job id, in this process: open the store read-only, rank, close."""
    from metasched.app.ranking import rank
    from metasched.rank.state import open_existing_store
    from metasched.settings import load_config

    config = load_config(None, {}, read_secrets=False)
    results: list[dict[str, Any]] = []
    barrier.wait(60)
    for job_id in job_ids:
        entry: dict[str, Any] = {"job_id": job_id}
        try:
            store, warning = open_existing_store(url)
            notes: list[str] = []
            try:
                answer = rank(
                    rank_request(job_id),
                    config,
                    store,
                    datetime.now(UTC),
                    [warning] if warning else [],
                    notes,
                )
            finally:
                if store is not None:
                    store.close()
            entry.update(valid=valid_answer(answer), warnings=answer["warnings"], notes=notes)
        except Exception as exc:  # the test reports it; a rank must never raise
            entry["error"] = f"{type(exc).__name__}: {exc}"
        results.append(entry)
    Path(out).write_text(json.dumps(results))


def test_concurrent_ranks_lose_no_entry_and_never_fail(store_url: str, tmp_path: Path) -> None:
    build_state(store_url)
    ctx = multiprocessing.get_context("spawn")  # no inherited connections or locks
    barrier = ctx.Barrier(PROCESSES)
    per = RANKS // PROCESSES
    procs = []
    for p in range(PROCESSES):
        ids = [str(100_000 + p * per + i) for i in range(per)]
        proc = ctx.Process(target=rank_worker, args=(store_url, ids, barrier, str(tmp_path / f"w{p}.json")))
        proc.start()
        procs.append(proc)
    for proc in procs:
        proc.join(240)
        assert proc.exitcode == 0
    results = [r for p in range(PROCESSES) for r in json.loads((tmp_path / f"w{p}.json").read_text())]

    assert len(results) == RANKS
    assert [r for r in results if "error" in r] == []
    assert all(r["valid"] for r in results)
    lost = [w for r in results for w in r["warnings"] if NOT_RECORDED in w]
    assert lost == [], f"{len(lost)} placements not recorded, e.g. {lost[:3]}"
    assert all(r["notes"] == [f"placement of job {r['job_id']} recorded: " + r["notes"][0].rsplit(" ", 1)[1]]
               for r in results)  # fmt: skip
    rows = ledger_rows(store_url)
    assert len(rows) == RANKS
    assert {r[0] for r in rows} == {r["job_id"] for r in results}
    assert {r[2] for r in rows} == {"inflight"}
    # Each rank saw the ones before it: the burst spread over the destinations.
    assert {r[1] for r in rows} == set(DESTS)


# -- the real command line ---------------------------------------------------------------------


def cli_rank(
    url: str, env: dict[str, str], req: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metasched", "rank", "--database", url, *extra],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def answer_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert valid_answer(result)
    return result


def shape(result: dict[str, Any]) -> Any:
    """What TPV relies on: the keys, the destinations in order and each entry's keys."""
    return (
        set(result),
        [r["id"] for r in result["ranked"]],
        [(set(r), set(r["components"])) for r in result["ranked"]],
    )


@contextmanager
def sqlite_writer(url: str, mode: str) -> Iterator[threading.Event]:
    """Another connection holding ``BEGIN <mode>`` on the file until the block ends. Yields an event
    that is set once the lock has been released (so a test can tell it finished before that)."""
    conn = sqlite3.connect(url, isolation_level=None)
    released = threading.Event()
    try:
        conn.execute(f"BEGIN {mode}")
        yield released
    finally:
        conn.execute("ROLLBACK")
        released.set()
        conn.close()


@contextmanager
def postgres_writer(url: str, mode: str) -> Iterator[threading.Event]:
    """A transaction holding ``LOCK TABLE placement IN <mode> MODE`` until the block ends."""
    import psycopg

    conn = psycopg.connect(url)
    released = threading.Event()
    try:
        with conn.cursor() as cur:
            cur.execute(f'LOCK TABLE "placement" IN {mode} MODE')
        yield released
    finally:
        conn.rollback()
        released.set()
        conn.close()


LOCKS = [
    pytest.param("sqlite", "EXCLUSIVE", id="sqlite-exclusive"),
    pytest.param("sqlite", "IMMEDIATE", id="sqlite-immediate"),
    pytest.param("postgres", "EXCLUSIVE", id="postgres-exclusive"),  # reads pass, writes wait
    pytest.param("postgres", "ACCESS EXCLUSIVE", id="postgres-access-exclusive"),  # reads wait too
]


@pytest.mark.parametrize(("backend", "mode"), LOCKS)
def test_a_locked_store_answers_in_shape_with_a_warning(
    backend: str, mode: str, tmp_path: Path, env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = str(tmp_path / "state" / "metasched.db")
        writer = sqlite_writer
    else:
        from tests.infra.postgres import create_database, drop_database

        server = request.getfixturevalue("postgres")
        url = create_database(server, f"lock_{os.getpid()}_{mode.replace(' ', '_').lower()}")
        request.addfinalizer(lambda: drop_database(server, url.rsplit("/", 1)[1]))
        writer = postgres_writer
    build_state(url)

    with writer(url, mode) as released:
        locked = cli_rank(url, env, rank_request("g-locked"))
        finished_while_locked = not released.is_set()
    assert finished_while_locked
    answer = answer_of(locked)
    lost = [w for w in answer["warnings"] if NOT_RECORDED in w]
    assert len(lost) == 1, answer["warnings"]
    # The cause names the lock: SQLite "database is locked", PostgreSQL "... due to lock timeout".
    assert lost[0].startswith("placement of job g-locked not recorded (") and "lock" in lost[0], lost
    assert ledger_rows(url) == []

    unlocked = answer_of(cli_rank(url, env, rank_request("g-free")))
    assert shape(unlocked) == shape(answer)
    assert not [w for w in unlocked["warnings"] if NOT_RECORDED in w]
    assert [r[0] for r in ledger_rows(url)] == ["g-free"]


def test_without_job_id_answered_not_recorded_and_explained(store_url: str, env: dict[str, str]) -> None:
    build_state(store_url)
    proc = cli_rank(store_url, env, rank_request(None), "--explain")
    answer = answer_of(proc)
    assert not [w for w in answer["warnings"] if NOT_RECORDED in w]
    assert "note: placement not recorded: the request has no job.job_id" in proc.stderr.splitlines()
    assert ledger_rows(store_url) == []


def test_ranking_the_same_job_again_replaces_its_entry(store_url: str, env: dict[str, str]) -> None:
    build_state(store_url)
    first = cli_rank(store_url, env, rank_request(4242), "--explain")
    answer_of(first)
    assert any(
        line.startswith("note: placement of job 4242 recorded: ") for line in first.stderr.splitlines()
    )
    with Store.open(store_url) as store:
        (placed_first,) = store.db.fetch('SELECT "placed_at" FROM "placement"', [])
        store.db.orm.execute_sql(  # collect saw it meanwhile: the re-rank puts it back in flight
            'UPDATE "placement" SET "state" = \'resolved\', "actual_destination" = \'cloud\''
        )
    answer_of(cli_rank(store_url, env, rank_request("4242")))
    rows = ledger_rows(store_url)
    assert len(rows) == 1 and rows[0][0] == "4242" and rows[0][2] == "inflight"
    with Store.open(store_url) as store:
        ((placed_again, actual),) = store.db.fetch(
            'SELECT "placed_at", "actual_destination" FROM "placement"', []
        )
    assert actual is None and placed_again != placed_first[0]


# -- the bounded retry -------------------------------------------------------------------------


class CountingStore(Store):
    """Counts the write transactions record_placement attempts on it and calls ``before_attempt``
    with the attempt's number before each (through the ``counted`` fixture)."""

    attempts = 0
    before_attempt: Callable[[int], None] | None = None


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap the ledger's one-transaction writers so a CountingStore sees every attempt."""
    from metasched.store import placements

    def counting(
        real: Callable[[Store, list[Any], float], None],
    ) -> Callable[[Store, list[Any], float], None]:
        def attempt(store: Store, values: list[Any], busy_timeout_s: float) -> None:
            if isinstance(store, CountingStore):
                store.attempts += 1
                if store.before_attempt is not None:
                    store.before_attempt(store.attempts)
            real(store, values, busy_timeout_s)

        return attempt

    for name in ("_write_sqlite", "_write_postgres"):
        monkeypatch.setattr(placements, name, counting(getattr(placements, name)))


@contextmanager
def holding(url: str) -> Iterator[Callable[[], None]]:
    """Another connection (in its own thread) holds the ledger's write lock until the yielded
    ``release()`` is called, or the block ends; ``release()`` returns once the lock is free."""
    pg = url.startswith("postgresql://")
    writer = postgres_writer(url, "EXCLUSIVE") if pg else sqlite_writer(url, "IMMEDIATE")
    locked, go, free = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with writer:
                locked.set()
                go.wait(60)
        finally:
            free.set()

    def release() -> None:
        go.set()
        free.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    try:
        yield release
    finally:
        release()
        thread.join(30)


def entry(job_id: str) -> Any:
    from metasched.domain.destination import PlacementEntry

    return PlacementEntry(job_id, "hpc", TOOL, 2.0, 4096.0, 0.0, datetime.now(UTC), 0.0, 30.0, 600.0)


def test_a_lock_held_past_one_attempt_is_waited_out_by_the_next(store_url: str, counted: None) -> None:
    """A lock held through one whole attempt: with one attempt the entry is lost; with three, the
    lock released just before the second, it is recorded (no timing: the release is an event)."""
    from metasched.store.placements import LedgerError, record_placement

    build_state(store_url)
    with CountingStore.open(store_url, readonly=True, busy_timeout=0.5, connect_timeout=1) as store:
        with holding(store_url), pytest.raises(LedgerError, match="lock"):
            record_placement(store, entry("one"), busy_timeout_s=0.1, attempts=1)
        assert store.attempts == 1
        store.attempts = 0
        with holding(store_url) as release:
            store.before_attempt = lambda n: release() if n == 2 else None
            record_placement(store, entry("three"), busy_timeout_s=0.1, attempts=3)
        assert store.attempts == 2
    assert [r[0] for r in ledger_rows(store_url)] == ["three"]


def test_a_store_that_cannot_take_the_entry_is_not_retried(store_url: str, counted: None) -> None:
    from metasched.store.placements import LedgerError, record_placement

    build_state(store_url)
    with Store.open(store_url) as store:
        store.db.orm.execute_sql('DROP TABLE "placement"')
    with CountingStore.open(store_url, readonly=True, busy_timeout=0.5, connect_timeout=1) as store:
        with pytest.raises(LedgerError, match="placement"):
            record_placement(store, entry("gone"))
        assert store.attempts == 1
