"""README's exit-code table, command by command, as a subprocess sees it (real SQLite files, real sshd/Slurm).

Columns: a bad config -> 2; a store that cannot be opened (not a database, or a schema newer than this
metasched) -> 2; an internal error -> 1; a partial failure -> 3 where a command can partially fail
(``collect``: an unreachable destination, a destination whose snapshot the store refuses; ``enforce``: a
renice the kernel refuses). ``rank`` is the documented exception for the store: it answers from the request
alone (exit 0) and says so in ``warnings``; ``config check`` never opens the store.

The internal error is injected from outside the product: ``python -c`` replaces one core function with one
that raises, then runs the real ``main()``; the product has no switch for it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from metasched.store import Store
from tests.infra.procs import free_port
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHServer

REQUEST = {"job": {"tool_id": "cat1"}, "destinations": [{"id": "here"}, {"id": "there"}]}

# The real entry point, after one core function has been replaced by one that raises.
INJECT = """\
import importlib, sys
module, _, attr = sys.argv[1].partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
def broken(*args, **kwargs):
    raise RuntimeError("injected failure")
setattr(owner, name, broken)
sys.argv = ["metasched", *sys.argv[2:]]
from metasched.cli import main
main()
"""


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    core: str  # what the internal-error column breaks: "module:attribute[.attribute]"


COMMANDS = {
    "collect": Command(("collect",), "metasched.app.collect:collect_all"),
    "rank": Command(("rank",), "metasched.app.ranking:rank"),
    "serve": Command(("serve", "--no-collect"), "metasched.serve.server:run"),
    "status": Command(("status",), "metasched.app.status:status_report"),
    "disable": Command(("disable", "here", "--reason", "maintenance"), "metasched.store:Store.set_disabled"),
    "enable": Command(("enable", "here"), "metasched.store:Store.set_disabled"),
    "policy show": Command(("policy", "show"), "metasched.policy:active_policies"),
    "policy set": Command(("policy", "set", "exclusive"), "metasched.policy:set_policy"),
    "enforce": Command(("enforce", "--dry-run"), "metasched.policy.enforce:enforce"),
    "config check": Command(("config", "check"), "metasched.settings.check:inspect_config"),
}


def _env(tmp_path: Path) -> dict[str, str]:
    """No METASCHED_* or XDG state from the caller; HOME private so nothing lands in root's home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METASCHED_", "XDG_"))
        and k not in ("CONFIGURATION_DIRECTORY", "STATE_DIRECTORY")
    }
    env["HOME"] = str(tmp_path / "home")
    return env


def _argv(name: str, config: Path, db: Path) -> list[str]:
    argv = [*COMMANDS[name].argv, "-c", str(config), "--database", str(db)]
    if name == "serve":
        argv += ["--port", str(free_port())]
    return argv


def run(
    name: str, config: Path, db: Path, tmp_path: Path, inject: str | None = None
) -> subprocess.CompletedProcess[str]:
    prefix = [sys.executable, "-c", INJECT, inject] if inject else [sys.executable, "-m", "metasched"]
    return subprocess.run(
        [*prefix, *_argv(name, config, db)],
        input=json.dumps(REQUEST),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path),
    )


def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yml"
    doc = {
        "destinations": [
            {"id": "here", "scheduler": "node", "host": "local"},
            {"id": "there", "scheduler": "node", "host": "local"},
        ],
        "policies": [{"destinations": ["here", "there"], "name": "shared"}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


BAD_CONFIGS = {
    "unknown key": "destinations:\n  - {id: here, scheduler: node, host: local, colour: red}\n",
    "bad value": "destinations:\n  - {id: here, scheduler: pbs, host: local}\n",
    "not YAML": "destinations: [\n",
}


@pytest.mark.parametrize("problem", BAD_CONFIGS)
@pytest.mark.parametrize("name", COMMANDS)
def test_bad_config_exits_2_naming_the_file(tmp_path: Path, name: str, problem: str) -> None:
    config = tmp_path / "broken.yml"
    config.write_text(BAD_CONFIGS[problem])
    db = tmp_path / "state.db"
    done = run(name, config, db, tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == "" or name == "config check", done.stdout
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith(str(config)) for line in lines), done.stderr
    assert "Traceback" not in done.stderr
    assert not db.exists() or name == "config check"  # nothing was opened on a config it could not read


def _not_a_database(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is no SQLite file, a collect log written to the wrong path\n" * 64)
    return db


def _newer_schema(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"
    Store.open(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE setting SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    return db


STORES = {"not a database": _not_a_database, "newer schema": _newer_schema}


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("name", COMMANDS)
def test_unusable_store_exits_2_naming_the_database(tmp_path: Path, name: str, store: str) -> None:
    db = STORES[store](tmp_path)
    before = db.read_bytes()
    done = run(name, good_config(tmp_path), db, tmp_path)
    assert "Traceback" not in done.stderr
    if name == "rank":  # documented: degraded, answers from the request alone
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert [r["id"] for r in answer["ranked"]] == ["here", "there"]
        assert any("state store unreadable" in w for w in answer["warnings"]), answer["warnings"]
    elif name == "config check":  # validates the file only; the store is not its business
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("ok (2 destinations)")
    else:
        assert done.returncode == 2, (done.returncode, done.stderr)
        assert done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("database: ") and str(db) in line, line
        if store == "newer schema":
            assert "newer than this metasched" in line
    assert db.read_bytes() == before  # never "repaired" or migrated down


@pytest.mark.parametrize("name", COMMANDS)
def test_internal_error_exits_1_with_one_line(tmp_path: Path, name: str) -> None:
    db = tmp_path / "state.db"
    Store.open(str(db)).close()
    done = run(name, good_config(tmp_path), db, tmp_path, inject=COMMANDS[name].core)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == ["metasched: internal error: RuntimeError: injected failure"]


def test_the_injection_breaks_only_what_it_names(tmp_path: Path) -> None:
    """The wrapper itself is harmless: injecting into a function the command does not call changes nothing."""
    db = tmp_path / "state.db"
    done = run("collect", good_config(tmp_path), db, tmp_path, inject="metasched.policy:set_policy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("collect: 2 ok, 0 failed")


# --- partial failures -------------------------------------------------------------------------------


def _ssh_entry(sshd: SSHServer, **kw: object) -> dict[str, object]:
    return {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts),
        "connect_timeout": 3,
        **kw,
    }


def test_collect_with_an_unreachable_destination_exits_3(tmp_path: Path, sshd: SSHServer) -> None:
    config = tmp_path / "config.yml"
    closed = free_port()
    doc = {
        "destinations": [
            {"id": "here", "scheduler": "node", "host": "local"},
            {"id": "over_ssh", "scheduler": "node", **_ssh_entry(sshd)},
            {"id": "gone", "scheduler": "node", **_ssh_entry(sshd, port=closed)},
        ]
    }
    config.write_text(yaml.safe_dump(doc))
    db = tmp_path / "state.db"
    done = run("collect", config, db, tmp_path)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("collect: 2 ok, 1 failed")
    assert any(line.startswith("gone FAILED: ") for line in lines), lines
    with Store.open(str(db)) as store:
        rows = {s.id: s for s in store.summaries()}
    assert rows["here"].reachable and rows["over_ssh"].reachable
    assert not rows["gone"].reachable and rows["gone"].error


def test_collect_with_a_failed_store_write_exits_3_and_keeps_the_old_state(tmp_path: Path) -> None:
    """The store refuses one destination's snapshot (as a full disk or a damaged table would): that one is
    failed with the database's message, its previous snapshot stays, the other is stored; exit 3."""
    config = good_config(tmp_path)
    db = tmp_path / "state.db"
    first = run("collect", config, db, tmp_path)
    assert first.returncode == 0, first.stderr
    with Store.open(str(db)) as store:
        old_nodes = store.nodes("there")
        old_success = store.summaries(["there"])[0].last_success
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON node WHEN NEW.destination_id = 'there' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    conn.close()
    done = run("collect", config, db, tmp_path)
    assert done.returncode == 3, done.stderr
    by_id = {line.split(" ", 1)[0]: line for line in done.stdout.splitlines()[:-1]}
    assert by_id["here"].startswith("here ok ")
    assert by_id["there"].startswith("there FAILED: storing the snapshot failed")
    assert "database or disk is full" in by_id["there"]
    with Store.open(str(db)) as store:
        there = store.summaries(["there"])[0]
        assert store.nodes("there") == old_nodes and there.last_success == old_success
        assert not there.reachable and "database or disk is full" in (there.error or "")
        assert store.summaries(["here"])[0].last_success != old_success


def test_enforce_with_a_refused_renice_exits_3(tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster) -> None:
    """The Slurm fixture's running jobs are root's: the ssh user's renice of them is refused by the kernel."""
    config = tmp_path / "config.yml"
    doc = {
        "destinations": [
            {"id": "slurm_a", "scheduler": "slurm", "env": slurm.env, **_ssh_entry(sshd)},
            {"id": "hp", "scheduler": "node", **_ssh_entry(sshd)},
        ],
        "policies": [{"destinations": ["slurm_a", "hp"], "name": "best_effort", "high_priority": "hp"}],
    }
    config.write_text(yaml.safe_dump(doc))
    db = tmp_path / "state.db"
    argv = [sys.executable, "-m", "metasched", "enforce", "--json", "-c", str(config), "--database", str(db)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert done.returncode == 3, (done.stdout, done.stderr)
    actions = json.loads(done.stdout)["actions"]
    refused = [a for a in actions if not a["ok"]]
    assert refused and all("Operation not permitted" in a["error"] for a in refused), actions
