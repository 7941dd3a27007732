"""Real daemons for the tests: each fixture module starts its own on loopback and stops it by PID."""

from pathlib import Path

import pytest

from tests.infra.env import isolated_env

pytest_plugins = [
    "tests.infra.sshd",
    "tests.infra.slurm",
    "tests.infra.postgres",
    "tests.infra.influx",
    "tests.infra.sge",
    "tests.infra.serve",
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No config, database or credentials but the test's own; HOME private (tests.infra.env)."""
    return isolated_env(tmp_path / "home")
