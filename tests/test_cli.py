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


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(command: list[str]) -> None:
    done = run(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    if command[-1] not in ("config", "policy"):
        assert "--verbose" in done.stdout or "--config" in done.stdout


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


def test_bare_command_shows_help() -> None:
    done = run()
    assert "Usage:" in done.stdout + done.stderr
    assert "collect" in done.stdout + done.stderr
