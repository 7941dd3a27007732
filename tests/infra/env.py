"""The environment a command under test sees: nothing of the caller's metasched set-up, a private HOME."""

from __future__ import annotations

import os
from pathlib import Path

# Variables that would point a command at another config, database, state directory or credentials.
_DROPPED = ("CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "XDG_STATE_HOME", "CREDENTIALS_DIRECTORY")


def isolated_env(home: Path) -> dict[str, str]:
    """The caller's environment without METASCHED_*, INFLUXDB_* and the systemd/XDG directories; HOME
    is ``home`` (created by whoever writes there), so the built-in default database lands in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASCHED_", "INFLUXDB_"))}
    for key in _DROPPED:
        env.pop(key, None)
    env["HOME"] = str(home)
    return env
