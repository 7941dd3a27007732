"""The command line as a user meets it: every command's --help, and one-line usage errors (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = [
    ["collect"],
    ["status"],
    ["rank"],
    ["serve"],
    ["disable"],
    ["enable"],
    ["policy"],
    ["policy", "show"],
    ["policy", "set"],
    ["enforce"],
    ["config"],
    ["config", "check"],
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METASCHED_")}
    return subprocess.run(
        [sys.executable, "-m", "metasched", *args], capture_output=True, text=True, timeout=60, env=env
    )


GROUPS = {("policy",): ("show", "set"), ("config",): ("check",)}


def _option_rows(help_text: str) -> dict[str, str]:
    """Each option row of Typer's help box by its long name: ``{"--config": "-c ...", ...}``."""
    rows: dict[str, str] = {}
    for line in help_text.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("--"):
            rows[cells[0]] = " ".join(cells[1:])
    return rows


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(command: list[str]) -> None:
    """README: every command has --help, --config/-c, --database and -v/--verbose."""
    done = run(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"Usage: metasched {' '.join(command)}" in done.stdout
    if tuple(command) in GROUPS:
        for sub in GROUPS[tuple(command)]:
            assert f"│ {sub} " in done.stdout, done.stdout
        return
    rows = _option_rows(done.stdout)
    assert rows["--config"].startswith("-c "), rows
    assert "METASCHED_CONFIG" in done.stdout and "METASCHED_DATABASE" in done.stdout
    assert "--database" in rows
    assert rows["--verbose"].startswith("-v "), rows


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["status", "--watch", "abc"], "--watch"),
        (["status", "--bogus"], "--bogus"),
        (["nosuch"], "nosuch"),
        (["collect", "--only"], "--only"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], names: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert names in lines[0]
    assert lines[0].startswith("metasched")


@pytest.mark.parametrize("group", [[], ["policy"], ["config"]], ids=lambda g: " ".join(g) or "metasched")
def test_bare_command_shows_help_and_exits_2(group: list[str]) -> None:
    """No command is a usage error (exit 2); the help on stdout is the whole message, no stray line."""
    done = run(*group)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"Usage: metasched {' '.join(group)}".rstrip() in done.stdout
    assert done.stderr == ""
    if not group:
        for command in (
            "collect",
            "rank",
            "serve",
            "status",
            "disable",
            "enable",
            "policy",
            "enforce",
            "config",
        ):
            assert f"│ {command} " in done.stdout
