"""kill -9 in the middle of a big snapshot write leaves a sound SQLite file holding the old snapshot."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Partition, Snapshot
from metasched.store import Store

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Builds a 200k-job snapshot, says so, then writes it: the test kills it once the write is under way.
WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from metasched.domain.jobs import Job, Node, Snapshot
    from metasched.store import Store

    url, n = sys.argv[1], int(sys.argv[2])
    now = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
    snapshot = Snapshot(
        nodes=[Node(f"new{i}", "idle", True, 64) for i in range(1000)],
        jobs=[Job(f"new{k}", "pending", "main", f"g{k}_tool_user", "u", "PENDING", "Priority", 2, 100, 0, now)
              for k in range(n)],
    )
    with Store.open(url) as store:
        print("writing", flush=True)
        store.write_snapshot("d", snapshot, run_id="killed", started=now, finished=now)
    print("done", flush=True)
    """
)


def old_snapshot() -> Snapshot:
    return Snapshot(
        nodes=[Node(f"old{i}", "mixed", True, 16, i % 16, 64000, 1000) for i in range(20)],
        partitions=[Partition("main", True, limits={"MaxTime": "1-00:00:00"})],
        jobs=[
            Job(
                f"{k}",
                RUNNING if k % 2 else PENDING,
                "main",
                f"g{k}_bowtie2_u",
                "u",
                submit_time=T0,
                cores=k % 7 + 1,
            )
            for k in range(3000)
        ],
    )


def state(store: Store) -> tuple[Any, ...]:
    return (
        store.summaries(),
        store.nodes("d"),
        store.partitions("d"),
        store.jobs("d"),
        store.history("d", limit=10000),
        store.runs(limit=100),
    )


def wal_size(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


def test_kill_during_write_keeps_the_old_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(str(db)) as store:
        store.sync_destinations([("d", "slurm", "head")])
        store.write_snapshot("d", old_snapshot(), run_id="old", started=T0, finished=T0)
        # Some history too, so a half-applied write would show up there as well.
        later = T0 + timedelta(minutes=1)
        store.write_snapshot("d", old_snapshot(), run_id="old2", started=later, finished=later)
        before = state(store)
    wal_before = wal_size(db)

    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), "200000"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        # The transaction is under way once pages spill into the WAL; then kill at a random moment of it.
        deadline = time.monotonic() + 60
        while wal_size(db) <= wal_before + (1 << 20) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    assert "done" not in out  # the kill landed before the write finished

    with sqlite3.connect(db) as lite:
        assert lite.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert lite.execute("PRAGMA foreign_key_check").fetchall() == []
    lite.close()
    with Store.open(str(db)) as store:
        assert state(store) == before
        assert len(store.jobs("d")) == 3000
        # And the store keeps working: the next collect writes normally.
        after = T0 + timedelta(minutes=5)
        store.write_snapshot("d", Snapshot(), run_id="next", started=after, finished=after)
        assert store.jobs("d") == []
        assert store.summaries(["d"])[0].last_success == after
