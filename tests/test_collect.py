"""collect end to end: real sshd (user mstest), real Slurm 22.05, real SQLite files.

Failure cases are real too: a closed port, a command that hangs past command_timeout (a ``sinfo``
that sleeps, first on PATH), a key the server does not accept, a host key missing from known_hosts,
and squeue output cut short by ``head -c`` (real output, truncated).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from msgspec.structs import replace

from metasched.app.collect import collect_all
from metasched.app.lock import CollectAlreadyRunning, CollectLock, lock_path
from metasched.settings import Config, DestinationConfig, InfluxSettings, SSHSettings
from metasched.store import Store
from tests.infra.procs import free_port
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHDFactory, SSHServer, make_key

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def wrappers() -> Iterator[Path]:
    """World-readable dir (mstest runs these) with a hanging ``sinfo`` and a truncating ``squeue``."""
    d = Path(tempfile.mkdtemp(prefix="metasched-wrap-"))
    d.chmod(0o755)
    for sub, name, body in (
        ("hang", "sinfo", "exec sleep 30\n"),
        ("cut", "squeue", 'set -o pipefail 2>/dev/null; /usr/bin/squeue "$@" | head -c 150\n'),
    ):
        (d / sub).mkdir(mode=0o755)
        script = d / sub / name
        script.write_text("#!/bin/bash\n" + body)
        script.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def bad_keys() -> Iterator[tuple[Path, Path]]:
    """(a client key no server accepts, an empty known_hosts)."""
    d = Path(tempfile.mkdtemp(prefix="metasched-badkeys-"))
    empty = d / "known_hosts"
    empty.write_text("")
    yield make_key(d / "stranger"), empty
    shutil.rmtree(d, ignore_errors=True)


def config_of(db: Path, *dests: DestinationConfig, **collect: Any) -> Config:
    from metasched.settings import CollectSettings

    return Config(
        path=None,
        database=str(db),
        ssh=SSHSettings(),
        destinations=tuple(dests),
        collect=replace(CollectSettings(), **collect),
    )


def mixed(
    sshd: SSHServer, slurm: SlurmCluster, wrappers: Path, bad_keys: tuple[Path, Path]
) -> list[DestinationConfig]:
    stranger, empty_known_hosts = bad_keys
    return [
        sshd.destination("slurm_ok", "slurm", env=slurm.env),
        sshd.destination("node_ok", "node"),
        DestinationConfig(id="local_ok", scheduler="node", host="local", ssh=SSHSettings()),
        sshd.destination("closed", "node", port=free_port()),
        sshd.destination(
            "hangs", "slurm", env={**slurm.env, "PATH": f"{wrappers}/hang:{BASE_PATH}"}, command_timeout=1.0
        ),
        sshd.destination("wrong_key", "node", key_file=str(stranger)),
        sshd.destination("unknown_host", "node", known_hosts=str(empty_known_hosts)),
        sshd.destination("truncated", "slurm", env={**slurm.env, "PATH": f"{wrappers}/cut:{BASE_PATH}"}),
    ]


EXPECTED_ERRORS = {
    "closed": "connection refused",
    "hangs": "command timed out after 1s",
    "wrong_key": "authentication failed",
    "unknown_host": "unknown host key",
    "truncated": "squeue",
}


def test_mixed_destinations(
    tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, wrappers: Path, bad_keys: tuple[Path, Path]
) -> None:
    db = tmp_path / "state.db"
    config = config_of(db, *mixed(sshd, slurm, wrappers, bad_keys))
    seen: list[str] = []
    with Store.open(str(db)) as store:
        report = collect_all(config, store, on_progress=lambda r: seen.append(r.id))
        summaries = {s.id: s for s in store.summaries()}
        slurm_jobs = store.jobs("slurm_ok")
    assert sorted(seen) == sorted(d.id for d in config.destinations)
    results = {r.id: r for r in report.results}
    assert [r.id for r in report.results] == [d.id for d in config.destinations]  # config order
    assert report.exit_code == 3 and report.ok_count == 3 and report.failed_count == 5
    for ok in ("slurm_ok", "node_ok", "local_ok"):
        assert results[ok].ok and results[ok].error is None, results[ok]
        assert summaries[ok].reachable and summaries[ok].error is None
    assert results["slurm_ok"].jobs == len(slurm_jobs) > 0
    assert results["slurm_ok"].nodes == 3
    for bad, fragment in EXPECTED_ERRORS.items():
        error = results[bad].error
        assert error is not None and fragment in error and "\n" not in error, (bad, error)
        assert not summaries[bad].reachable and summaries[bad].error == error
        assert summaries[bad].last_success is None
    assert "ParseError" not in str(results["truncated"].error)  # the parser's own message, not a crash


def test_failed_collect_keeps_old_snapshot(tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster) -> None:
    db = tmp_path / "state.db"
    good = sshd.destination("flaky", "slurm", env=slurm.env)
    with Store.open(str(db)) as store:
        first = collect_all(config_of(db, good), store, now=datetime(2026, 1, 1, 12, tzinfo=UTC))
        assert first.exit_code == 0
        jobs_before = store.jobs("flaky")
        nodes_before = store.nodes("flaky")
        success_before = store.summaries(["flaky"])[0].last_success

        broken = replace(good, ssh=replace(good.ssh, port=free_port()))
        second = collect_all(config_of(db, broken), store, now=datetime(2026, 1, 1, 12, 1, tzinfo=UTC))
        assert second.exit_code == 3
        assert store.jobs("flaky") == jobs_before and jobs_before
        assert store.nodes("flaky") == nodes_before
        summary = store.summaries(["flaky"])[0]
        assert summary.last_success == success_before
        assert summary.error is not None and "connection refused" in summary.error
        assert [r.ok for r in store.runs(dest_id="flaky")] == [False, True]


def logins(server: SSHServer) -> int:
    return server.log.read_text().count("Accepted publickey")


def test_one_connection_per_host(
    sshd_factory: SSHDFactory, slurm: SlurmCluster, wrappers: Path, tmp_path: Path
) -> None:
    """Like seed-2's node-<ip> and the scheduler whose master is that node: one login per host, each
    destination still with its own env, command_timeout, result and error."""
    servers = sshd_factory.many(3)
    dests = [s.destination(f"d{i}", "slurm", env=slurm.env) for i, s in enumerate(servers)]
    shared = servers[0]
    dests += [
        shared.destination("node_on_d0", "node"),
        shared.destination(
            "hangs_on_d0",
            "slurm",
            env={**slurm.env, "PATH": f"{wrappers}/hang:{BASE_PATH}"},
            command_timeout=1.0,
        ),
    ]
    seen: list[str] = []
    with Store.open(str(tmp_path / "db")) as store:
        report = collect_all(
            config_of(tmp_path / "db", *dests, fanout=2), store, on_progress=lambda r: seen.append(r.id)
        )
        summaries = {s.id: s for s in store.summaries()}
    assert sorted(seen) == sorted(d.id for d in dests)
    results = {r.id: r for r in report.results}
    assert [r.ok for r in report.results] == [True, True, True, True, False], report
    assert results["node_on_d0"].nodes == 1 and results["d0"].jobs > 0
    assert "command timed out after 1s" in str(results["hangs_on_d0"].error)
    assert summaries["node_on_d0"].reachable and not summaries["hangs_on_d0"].reachable
    for server in servers:  # d0's host served three destinations (seven commands) over one login
        assert logins(server) == 1


def test_connection_failure_fails_every_destination_on_the_host(sshd: SSHServer, tmp_path: Path) -> None:
    port = free_port()
    dests = [sshd.destination(i, "node", port=port) for i in ("a", "b")]
    dests.append(DestinationConfig(id="here", scheduler="node", host="local", ssh=SSHSettings()))
    with Store.open(str(tmp_path / "db")) as store:
        report = collect_all(config_of(tmp_path / "db", *dests), store)
        summaries = {s.id: s for s in store.summaries()}
    assert [(r.id, r.ok) for r in report.results] == [("a", False), ("b", False), ("here", True)]
    for bad in ("a", "b"):
        assert summaries[bad].error == f"127.0.0.1:{port}: connection refused"


def test_unsupported_and_disabled(tmp_path: Path) -> None:
    local = SSHSettings()
    dests = (
        DestinationConfig(id="here", scheduler="node", host="local", ssh=local),
        DestinationConfig(id="pbs", scheduler="pbs", host="local", ssh=local),  # type: ignore[arg-type]
        DestinationConfig(id="off", scheduler="node", host="local", ssh=local, enabled=False),
    )
    with Store.open(str(tmp_path / "db")) as store:
        report = collect_all(config_of(tmp_path / "db", *dests), store)
        ids = {s.id for s in store.summaries()}
    assert [(r.id, r.ok) for r in report.results] == [("here", True), ("pbs", False)]
    assert "not supported yet" in str(report.results[1].error)
    assert report.exit_code == 3
    assert ids == {"here", "pbs", "off"}  # configured destinations are known to status even when off


def test_metrics_failure_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    dest = DestinationConfig(id="here", scheduler="node", host="local", ssh=SSHSettings())
    config = replace(
        config_of(tmp_path / "db", dest),
        influxdb=InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="x", timeout=2.0),
    )
    with Store.open(str(tmp_path / "db")) as store:
        report = collect_all(config, store)
    assert report.exit_code == 0 and report.ok_count == 1
    assert report.warnings and all("influxdb" in w for w in report.warnings)


def test_lock_path() -> None:
    assert lock_path("/var/lib/m/m.db") == Path("/var/lib/m/m.db.collect.lock")
    assert lock_path("sqlite:////var/lib/m/m.db") == Path("/var/lib/m/m.db.collect.lock")
    pg = lock_path("postgresql://u@db/m", {"RUNTIME_DIRECTORY": "/run/metasched"})
    assert pg.parent == Path("/run/metasched") and pg.name.startswith("metasched-collect-")
    assert lock_path("postgresql://u@db/m", {}).parent == Path("/tmp")


def test_second_run_waits_for_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "db"
    config = config_of(db, DestinationConfig(id="here", scheduler="node", host="local", ssh=SSHSettings()))
    with Store.open(str(db)) as store:
        held = CollectLock(lock_path(str(db)), 0)
        held.acquire()
        with pytest.raises(CollectAlreadyRunning, match="collect already running"):
            collect_all(replace(config, collect=replace(config.collect, lock_timeout=0.2)), store)
        assert store.runs() == []
        threading.Timer(0.3, held.release).start()  # the first run ends while the second waits
        report = collect_all(replace(config, collect=replace(config.collect, lock_timeout=10)), store)
        assert report.exit_code == 0


# --- the command line ------------------------------------------------------------------------


def write_config(path: Path, db: Path, dests: list[DestinationConfig], **collect: Any) -> Path:
    """The YAML an operator would write for these destinations."""
    entries = []
    for d in dests:
        entry: dict[str, Any] = {"id": d.id, "scheduler": d.scheduler, "host": d.host}
        if d.env:
            entry["env"] = d.env
        if not d.is_local:
            s = d.ssh
            entry.update(
                port=s.port,
                user=s.user,
                key_file=s.key_file,
                known_hosts=s.known_hosts,
                connect_timeout=s.connect_timeout,
                command_timeout=s.command_timeout,
            )
        entries.append(entry)
    doc: dict[str, Any] = {"database": str(db), "destinations": entries}
    if collect:
        doc["collect"] = collect
    path.write_text(yaml.safe_dump(doc))
    return path


def metasched(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METASCHED_")}
    return subprocess.run(
        [sys.executable, "-m", "metasched", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**full_env, **(env or {})},
    )


def test_cli_help() -> None:
    res = metasched("collect", "--help")
    assert res.returncode == 0
    for option in ("--config", "--database", "--only", "--json", "--verbose"):
        assert option in res.stdout


def test_cli_plain_lines_exit_3_and_json(
    tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, wrappers: Path, bad_keys: tuple[Path, Path]
) -> None:
    db = tmp_path / "state.db"
    cfg = write_config(tmp_path / "c.yml", db, mixed(sshd, slurm, wrappers, bad_keys))
    res = metasched("collect", "-c", str(cfg))
    assert res.returncode == 3, res.stderr
    lines = res.stdout.splitlines()
    by_id = {line.split(" ", 1)[0]: line for line in lines[:-1]}
    assert set(by_id) == {"slurm_ok", "node_ok", "local_ok", *EXPECTED_ERRORS}
    assert by_id["slurm_ok"].startswith("slurm_ok ok ") and " jobs " in by_id["slurm_ok"]
    for bad, fragment in EXPECTED_ERRORS.items():
        assert by_id[bad].startswith(f"{bad} FAILED: ") and fragment in by_id[bad]
    assert lines[-1].startswith("collect: 3 ok, 5 failed in ")
    assert "Traceback" not in res.stderr and "paramiko" not in res.stderr

    res = metasched("collect", "-c", str(cfg), "--json", "--only", "slurm_ok", "--only", "closed")
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert [(d["id"], d["ok"]) for d in doc["destinations"]] == [("slurm_ok", True), ("closed", False)]
    assert doc["ok"] == 1 and doc["failed"] == 1 and doc["exit_code"] == 3
    assert "connection refused" in doc["destinations"][1]["error"]


def test_cli_all_ok_exit_0_and_config_errors(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yml",
        tmp_path / "db",
        [DestinationConfig(id="here", scheduler="node", host="local", ssh=SSHSettings())],
    )
    res = metasched("collect", "-c", str(cfg))
    assert res.returncode == 0 and res.stdout.startswith("here ok ")
    res = metasched("collect", "-c", str(cfg), "--only", "nosuch")
    assert res.returncode == 2 and "--only: no destination 'nosuch'" in res.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("destinations: [{id: x, scheduler: slurm, host: local, colour: blue}]\n")
    res = metasched("collect", "-c", str(bad))
    assert res.returncode == 2 and str(bad) in res.stderr and res.stdout == ""


def test_cli_overlap_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "db"
    cfg = write_config(
        tmp_path / "c.yml",
        db,
        [DestinationConfig(id="here", scheduler="node", host="local", ssh=SSHSettings())],
        lock_timeout=0.5,
    )
    metasched("collect", "-c", str(cfg))  # creates the database (and its directory)
    # own session: the cleanup below ends flock and its sleep, not just flock
    holder = subprocess.Popen(["flock", str(lock_path(str(db))), "sleep", "30"], start_new_session=True)
    try:
        time.sleep(0.3)
        res = metasched("collect", "-c", str(cfg))
        assert res.returncode == 0
        assert "collect already running" in res.stderr and res.stdout == ""
        res = metasched("collect", "-c", str(cfg), "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["skipped"] is True
    finally:
        os.killpg(holder.pid, signal.SIGTERM)
        holder.wait()
    with Store.open(str(db)) as store:
        assert len(store.runs()) == 1  # only the first run wrote anything


def run_in_pty(args: list[str]) -> tuple[int, str]:
    """Run metasched with stdout on a pseudo-terminal (what an operator at a shell sees)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METASCHED_")}
    env.update(COLUMNS="200", TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasched", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(30), b"".join(chunks).decode("utf-8", "replace")


def test_cli_tty_table(tmp_path: Path) -> None:
    local = SSHSettings()
    cfg = write_config(
        tmp_path / "c.yml",
        tmp_path / "db",
        [
            DestinationConfig(id="here", scheduler="node", host="local", ssh=local),
            DestinationConfig(id="broken_sge", scheduler="sge", host="local", ssh=local),
        ],
    )
    code, out = run_in_pty(["collect", "-c", str(cfg)])
    assert code == 3
    assert "┃" in out or "│" in out  # a rich table, not plain lines
    assert "destination" in out and "here" in out and "FAILED" in out
    assert "collect: 1 ok, 1 failed" in out


def test_kill_9_during_big_write_keeps_old_snapshot(tmp_path: Path, slurm: SlurmCluster) -> None:
    """A collect killed while writing ~60k jobs leaves a readable database with the previous snapshot."""
    big = tmp_path / "big"
    big.mkdir()
    marker = tmp_path / "output-done"
    squeue = big / "squeue"  # real squeue output, each job repeated as 8,000 array tasks
    squeue.write_text(
        "#!/bin/bash\n"
        '/usr/bin/squeue "$@" | awk -v n=8000 \'BEGIN{FS=OFS="\\037"} '
        '{id=$1; for(i=1;i<=n;i++){$1=id "_" i; print}}\'\n'
        f"touch {marker}\n"
    )
    squeue.chmod(0o755)
    db = tmp_path / "state.db"
    small = DestinationConfig(id="big", scheduler="slurm", host="local", ssh=SSHSettings(), env=slurm.env)
    huge = replace(small, env={**slurm.env, "PATH": f"{big}:{BASE_PATH}"})
    assert metasched("collect", "-c", str(write_config(tmp_path / "small.yml", db, [small]))).returncode == 0
    with Store.open(str(db)) as store:
        old_jobs = store.jobs("big")
        old_summary = store.summaries(["big"])[0]
    assert 0 < len(old_jobs) < 100

    cfg = write_config(tmp_path / "huge.yml", db, [huge])
    wal = Path(f"{db}-wal")
    for _attempt in range(3):
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "metasched", "collect", "-c", str(cfg)])
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        base = wal.stat().st_size if wal.exists() else 0
        # The write transaction has started once SQLite spills pages into the WAL.
        while proc.poll() is None and (wal.stat().st_size if wal.exists() else 0) < base + 1_000_000:
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        with Store.open(str(db)) as store:
            if len(store.runs(dest_id="big")) == 1:  # killed before its run was committed
                break
    else:
        pytest.fail("could not kill collect in the middle of its write")

    with Store.open(str(db)) as store:
        assert store.jobs("big") == old_jobs
        assert store.summaries(["big"])[0] == old_summary
    # Python's own SQLite (no sqlite3 binary: .ci/run does not install one)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # The lock died with the process: the next collect runs at once.
    assert metasched("collect", "-c", str(write_config(tmp_path / "small.yml", db, [small]))).returncode == 0
