"""A real TPV command line (total-perspective-vortex[cli], which pulls Galaxy) in its own cached venv.

The venv lives outside the project environment (Galaxy pins would clash with ours) at
``$METASCHED_TPV_VENV`` or /var/cache/metasched/tpv-venv. CI builds it with .ci/tpv-env.sh before the
tests; on a fresh developer machine the fixture runs that script itself (a few minutes, once).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

DEFAULT_VENV = Path("/var/cache/metasched/tpv-venv")
ENV_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "tpv-env.sh"
INSTALL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class TPVEnv:
    venv: Path

    @property
    def tpv(self) -> Path:
        """The `tpv` console script."""
        return self.venv / "bin" / "tpv"

    @property
    def python(self) -> Path:
        """The venv's interpreter, for drivers that import tpv in-process."""
        return self.venv / "bin" / "python"


def _installed(venv: Path) -> bool:
    """TPV 3 is installed there. Cheaper than .ci/tpv-env.sh's `tpv --help` (Galaxy's import: ~12 s),
    which has already run in CI; a subtler breakage shows in the test's own dry-run output."""
    if not (venv / "bin" / "tpv").exists():
        return False
    probe = "import importlib.metadata as m; print(m.version('total-perspective-vortex'))"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode == 0 and done.stdout.startswith("3.")


def ensure_tpv_env() -> TPVEnv:
    """Return a working TPV venv, building it with .ci/tpv-env.sh when it is missing or broken."""
    venv = Path(os.environ.get("METASCHED_TPV_VENV") or DEFAULT_VENV)
    if _installed(venv):
        return TPVEnv(venv)
    done = subprocess.run(
        ["bash", str(ENV_SCRIPT)],
        env={**os.environ, "METASCHED_TPV_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        pytest.fail(f"{ENV_SCRIPT} failed (exit {done.returncode}):\n{tail}", pytrace=False)
    lines = done.stdout.strip().splitlines()
    built = Path(lines[-1]) if lines else venv
    if not _installed(built):
        pytest.fail(f"no TPV 3 in {built} after {ENV_SCRIPT}", pytrace=False)
    return TPVEnv(built)


@pytest.fixture(scope="session")
def tpv_env() -> TPVEnv:
    """Session fixture over ensure_tpv_env (register tests.infra.tpv in conftest to use it by name)."""
    return ensure_tpv_env()
