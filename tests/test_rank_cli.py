"""`metasched rank` as TPV runs it: the real console script / ``python -m metasched`` in a subprocess.

Stores are real SQLite files built through the Store API (see test_rank_scenarios.build_store).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.test_rank_scenarios import SCENARIO_DIR, build_store

SEED = SCENARIO_DIR / "seed_shaped_locality_request.json"
HEAVY = (
    "fabric",
    "paramiko",
    "invoke",
    "influxdb_client",
    "rich",
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
)
HOSTILE = ['a"b', "line\nbreak", "x; rm -rf /", "'; DROP TABLE destination; --", "tab\there", "ünï", "$(id)"]


def metasched_cmd() -> list[str]:
    script = shutil.which("metasched")
    return [script] if script else [sys.executable, "-m", "metasched"]


def run(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, module: bool = False
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "metasched"] if module else metasched_cmd()
    return subprocess.run(
        [*cmd, "rank", *args], input=stdin, capture_output=True, env=env, timeout=60, check=False
    )


def ok_json(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert set(result) == {"schema_version", "sorted_destinations", "ranked", "warnings"}
    return result


def test_seed_request_unchanged_from_file_and_stdin(env: dict[str, str]) -> None:
    by_file = ok_json(run(["--request", str(SEED)], env))
    by_stdin = ok_json(run([], env, stdin=SEED.read_bytes(), module=True))
    ids = [d["id"] for d in json.loads(SEED.read_text())["destinations"]]
    assert sorted(by_file["sorted_destinations"]) == sorted(ids)
    assert by_file["sorted_destinations"] == by_stdin["sorted_destinations"]
    # 1 GB in Australia outweighs 110 MB in Europe.
    assert by_file["sorted_destinations"][0] == "pulsar_australia"
    assert any("does not exist" in w for w in by_file["warnings"])
    assert not (Path(env["HOME"]) / ".local").exists(), "rank must not create the database"


def test_old_aliases_via_cli(env: dict[str, str]) -> None:
    request = {
        "static_job_info": {"tool_id": "t", "cores": 1},
        "current_dest_info": [{"id": "q", "queued_job_count": 50, "running_job_count": 2}, {"id": "p"}],
        "static_dataset_info": {"1": {"object_store_id": "s", "size": 10}},
        "static_objectstores_info": {"s": {"latitude": 0, "longitude": 0}},
    }
    result = ok_json(run([], env, stdin=json.dumps(request).encode()))
    assert result["sorted_destinations"] == ["p", "q"]


INVALID_CLI = [
    (b"not json", "request: not JSON"),
    (b"[]", "request: must be an object"),
    (b'{"job": {"tool_id": "t"}, "destinations": [{"id": "a"}, {"x": 1}]}', "destinations[1].id: missing"),
    (
        b'{"job": {"tool_id": "t"}, "destinations": [{"id": "a"}, {"id": "a"}]}',
        "destinations[1].id: duplicate",
    ),
    (b'{"job": {"tool_id": "t", "cores": -2}, "destinations": []}', "job.cores: must be >= 0"),
    (b'{"job": {"tool_id": "t", "cores": "4"}, "destinations": []}', "job.cores: must be a number"),
    (b'{"job": {"tool_id": "t", "mem": NaN}, "destinations": []}', "request: NaN"),
    (b'{"job": {"tool_id": "t"}, "destinations": [], "options": {"x": 1}}', "options.x: unknown option"),
    (b" " * (17 * 1024 * 1024), "request: larger than"),
    (
        json.dumps(
            {"job": {"tool_id": "t"}, "destinations": [{"id": str(i)} for i in range(10_001)]}
        ).encode(),
        "destinations: more than 10000",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"),
    INVALID_CLI,
    ids=[
        "not-json",
        "not-object",
        "missing-id",
        "duplicate",
        "negative",
        "string",
        "nan",
        "option",
        "huge",
        "many",
    ],
)
def test_invalid_input_exit_2_nothing_on_stdout(env: dict[str, str], data: bytes, message: str) -> None:
    proc = run([], env, stdin=data)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and message in err, err


def test_missing_request_file_and_bad_config(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(["--request", str(tmp_path / "nope.json")], env)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert "nope.json" in proc.stderr.decode()
    cfg = tmp_path / "c.yml"
    cfg.write_text("rank:\n  weights:\n    warp_speed: 9\n")
    proc = run(["--request", str(SEED), "-c", str(cfg)], env)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert "warp_speed: unknown weight" in proc.stderr.decode()


def test_config_weights_and_objectstores_are_used(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "objectstores:\n  far: {latitude: -40, longitude: 175}\n"
        "rank:\n  weights: {default_run_s: 60, unknown_queue_s: 0}\n"
    )
    request = {
        "job": {"tool_id": "t"},
        "datasets": {"1": {"object_store_id": "far", "size": 1e9}},
        "destinations": [
            {"id": "eu", "latitude": 50, "longitude": 8},
            {"id": "nz", "latitude": -40, "longitude": 175},
        ],
    }
    env = {**env, "METASCHED_CONFIG": str(cfg)}
    result = ok_json(run([], env, stdin=json.dumps(request).encode()))
    assert result["sorted_destinations"] == ["nz", "eu"]
    nz = result["ranked"][0]["components"]
    assert (nz["run_s"], nz["queue_s"], nz["staging_s"]) == (60, 0, 0)


def test_hostile_ids_round_trip_with_stored_state(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    state = {"destinations": {h: {"nodes": [{"cores": 4, "mem_gb": 8}]} for h in HOSTILE}}
    build_store(db, state, now=datetime.now(UTC))
    request = {"job": {"tool_id": "t"}, "destinations": [{"id": h} for h in HOSTILE]}
    env = {**env, "METASCHED_DATABASE": str(db)}
    proc = run(["--explain"], env, stdin=json.dumps(request).encode())
    result = ok_json(proc)
    assert result["sorted_destinations"] == HOSTILE
    for entry in result["ranked"]:
        assert any(r.startswith("collected ") and "s ago" in r for r in entry["reasons"]), entry
    table = proc.stderr.decode()
    assert "line\\nbreak" in table  # escaped: one row per destination


def test_explain_table_on_stderr_json_on_stdout(env: dict[str, str]) -> None:
    proc = run(["--explain", "--request", str(SEED)], env)
    result = ok_json(proc)
    table = proc.stderr.decode().splitlines()
    assert table[0].split()[:3] == ["rank", "feasible", "staging_s"]
    for entry in result["ranked"]:
        assert any(line.rstrip().endswith(entry["id"]) for line in table)
    assert any(line.startswith("warning: ") for line in table)


def test_explain_shows_reasons_a_request_did_not_ask_for(env: dict[str, str]) -> None:
    """A hook's request (options.explain: false) fed to --explain: the table has the reasons, stdout
    answers as the request asked, the same as without --explain."""
    request = json.loads(SEED.read_text())
    request["options"] = {"explain": False}
    body = json.dumps(request).encode()
    proc = run(["--explain"], env, stdin=body)
    result = ok_json(proc)
    assert all("reasons" not in r for r in result["ranked"])
    assert result == ok_json(run([], env, stdin=body))
    assert any(line.startswith("      - ") for line in proc.stderr.decode().splitlines())


def test_help_lists_the_options(env: dict[str, str]) -> None:
    proc = run(["--help"], env)
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for option in ("--request", "--explain", "--config", "--database"):
        assert option in text


def test_unknown_option_is_a_usage_error(env: dict[str, str]) -> None:
    proc = run(["--frobnicate"], env, stdin=b"{}")
    assert proc.returncode == 2
    assert proc.stdout == b""


def test_no_heavy_imports_on_the_rank_path(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    build_store(db, {"destinations": {"a": {"nodes": [{"cores": 4}]}}})
    env = {**env, "METASCHED_DATABASE": str(db), "PYTHONPROFILEIMPORTTIME": "1"}
    for module in (False, True):
        proc = run(["--request", str(SEED)], env, module=module)
        ok_json(proc)
        imported = {
            line.split("|")[-1].strip().split(".")[0]
            for line in proc.stderr.decode().splitlines()
            if line.startswith("import time:")
        }
        assert imported, "no -X importtime output"
        assert not imported & set(HEAVY), imported & set(HEAVY)


def test_locked_and_corrupt_databases_degrade(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    build_store(db, {"destinations": {"a": {"nodes": [{"cores": 4, "mem_gb": 8}]}}}, now=datetime.now(UTC))
    request = json.dumps({"job": {"tool_id": "t"}, "destinations": [{"id": "b"}, {"id": "a"}]}).encode()
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE destination SET cores_free = 0 WHERE id = 'a'")
        result = ok_json(run([], {**env, "METASCHED_DATABASE": str(db)}, stdin=request))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result["sorted_destinations"] == ["a", "b"]  # the committed state: a has its cores free
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not a database" * 100)
    result = ok_json(run([], {**env, "METASCHED_DATABASE": str(bad)}, stdin=request))
    assert result["sorted_destinations"] == ["b", "a"]
    assert any("state store unreadable" in w for w in result["warnings"])


def test_exclusively_locked_database_does_not_hold_rank(env: dict[str, str], tmp_path: Path) -> None:
    """A writer holding an exclusive lock (another process: rank runs in a subprocess) costs rank
    its short busy timeout, not the writers' 10 s: TPV gives rank 2 s. The subprocess timeout below
    only turns the old 10 s hang into a failure; no wall time is asserted."""
    db = tmp_path / "state.db"
    build_store(db, {"destinations": {"a": {"nodes": [{"cores": 4, "mem_gb": 8}]}}}, now=datetime.now(UTC))
    request = json.dumps({"job": {"tool_id": "t"}, "destinations": [{"id": "b"}, {"id": "a"}]}).encode()
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("PRAGMA locking_mode=EXCLUSIVE")
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("UPDATE destination SET cores_free = 0 WHERE id = 'a'")
        proc = subprocess.run(
            [*metasched_cmd(), "rank", "--database", str(db)],
            input=request,
            capture_output=True,
            env=env,
            timeout=5,
            check=False,
        )
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    result = ok_json(proc)
    assert result["sorted_destinations"] == ["b", "a"]  # from the request alone
    assert any("database is locked" in w for w in result["warnings"]), result["warnings"]


def test_older_schema_is_not_migrated_by_rank(env: dict[str, str], tmp_path: Path) -> None:
    """rank opens the store read-only: an older schema is a warning, and stays for collect to migrate."""
    db = tmp_path / "state.db"
    build_store(db, {"destinations": {"a": {"nodes": [{"cores": 4, "mem_gb": 8}]}}}, now=datetime.now(UTC))
    with sqlite3.connect(db) as lite:
        lite.execute("UPDATE setting SET value = '3' WHERE key = 'schema_version'")
    request = json.dumps({"job": {"tool_id": "t"}, "destinations": [{"id": "b"}, {"id": "a"}]}).encode()
    result = ok_json(run(["--database", str(db)], env, stdin=request))
    assert result["sorted_destinations"] == ["b", "a"]
    assert any("schema version 3" in w and "read-only" in w for w in result["warnings"]), result["warnings"]
    with sqlite3.connect(db) as lite:
        assert lite.execute("SELECT value FROM setting WHERE key = 'schema_version'").fetchone() == ("3",)


def test_fast_path_matches_typer_path(env: dict[str, str]) -> None:
    """main() runs rank without Typer's coercion; the Typer command must answer the same."""
    from typer.testing import CliRunner

    from metasched.cli import app

    fast = ok_json(run(["--request", str(SEED)], env))
    res = CliRunner().invoke(app, ["rank", "--request", str(SEED)], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == fast


@pytest.mark.parametrize(
    ("argv", "handled"),
    [
        (["--help"], False),
        (["-c"], False),
        (["--request"], False),
        (["--request", "--explain"], False),
        (["extra"], False),
        (["-x"], False),
        (["--request=/nonexistent", "-vv", "--explain"], True),
        (["-r", "/nonexistent", "--verbose", "-c", "/nonexistent.yml"], True),
    ],
)
def test_fast_path_leaves_anything_unusual_to_typer(argv: list[str], handled: bool) -> None:
    import gc

    from metasched.cli.rank_fast import fast_main

    try:
        code = fast_main(argv, {})
    finally:
        gc.enable()  # fast_main turns it off for the short-lived CLI process
    assert (code is not None) is handled
    if handled:
        assert code == 2  # the request file does not exist


def test_internal_error_exit_1_nothing_on_stdout(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug inside ranking (simulated by a failing rank function) ends with exit 1 and empty stdout."""
    from metasched.cli import rank_fast
    from metasched.cli.rank_fast import run as run_rank

    def broken(*args: object, **kwargs: object) -> dict[str, Any]:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(rank_fast, "rank", broken)
    code = run_rank(SEED, False, None, None, 0, env)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == "metasched: internal error: ZeroDivisionError: simulated bug\n"
