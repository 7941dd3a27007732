"""A real TPV command line (total-perspective-vortex[cli], which pulls Galaxy) in its own cached venv.

The venv lives outside the project environment (Galaxy pins would clash with ours) at
``$METASCHED_TPV_VENV`` or /var/cache/metasched/tpv-venv. CI builds it with .ci/tpv-env.sh before the
tests; on a fresh developer machine the fixture runs that script itself (a few minutes, once).

Also here, shared by the TPV end-to-end modules: the driver that runs many `tpv dry-run` scenarios in
one TPV process, and two real Slurm test clusters (one busy, one idle) for `metasched collect`.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.slurm import SlurmCluster, start_slurm, stop_slurm
from tests.infra.sshd import SSHServer

DEFAULT_VENV = Path("/var/cache/metasched/tpv-venv")
ENV_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "tpv-env.sh"
OBJECT_STORES = Path(__file__).resolve().parents[2] / "examples" / "tpv" / "object_store_locations.yml"
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


# --- running `tpv dry-run` scenarios ---------------------------------------------------------------

FALLBACK_LOG = "metasched rank failed, keeping TPV order"
DRY_RUN_TIMEOUT_S = 600

JOB_CONF = """\
runners:
  local:
    load: galaxy.jobs.runners.local:LocalJobRunner
    workers: 1
execution:
  default: tpv_dispatcher
  environments:
    tpv_dispatcher:
      runner: dynamic
      type: python
      function: map_tool_to_destination
      rules_module: tpv.rules
"""

# Importing Galaxy costs ~12 s, so a test module runs all its scenarios through TPV's CLI entry point
# (`tpv.commands.shell.main`, exactly what the `tpv` script calls) in one process inside the TPV venv.
DRIVER = """\
import contextlib, io, json, sys, time
from tpv.commands.shell import main

scenarios_file, results_file = sys.argv[1:3]
scenarios = json.load(open(scenarios_file))
results = {}
for name, argv in scenarios.items():
    out = io.StringIO()
    sys.argv = ["tpv", *argv]
    error = None
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            main()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
    results[name] = {"stdout": out.getvalue(), "error": error, "elapsed": time.monotonic() - started}
json.dump(results, open(results_file, "w"))
"""


@dataclass(frozen=True)
class DryRun:
    """What one `tpv -v dry-run` printed (TPV logs to stdout) and how long it took in the driver."""

    stdout: str
    error: str | None = None
    elapsed: float = 0.0

    @property
    def winner(self) -> str:
        """The id of the JobDestination that dry-run printed (as YAML) on stdout."""
        ids: list[str] = re.findall(r"^id: (\S+)$", self.stdout, flags=re.MULTILINE)
        assert len(ids) == 1, (
            f"expected one destination in dry-run output (error={self.error}):\n{self.stdout}"
        )
        return ids[0]

    @property
    def fell_back(self) -> bool:
        return FALLBACK_LOG in self.stdout


def dry_run_argv(job_conf: Path, *configs: Path, tool: str = "bwa") -> list[str]:
    """`tpv -v dry-run ...`: -v lets the block's warnings through to stdout, where TPV logs."""
    args = ["-v", "dry-run", "--job-conf", str(job_conf), "--tool", tool, "--input-size", "3"]
    return args + [str(c) for c in configs]


def start_driver(
    tpv: TPVEnv, work: Path, scenarios: Mapping[str, list[str]], env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start the driver on ``scenarios`` (name -> tpv argv) in ``work``; finish with ``driver_results``."""
    (work / "scenarios.json").write_text(json.dumps(dict(scenarios)))
    (work / "driver.py").write_text(DRIVER)
    argv = [str(tpv.python), "driver.py", "scenarios.json", "results.json"]
    return subprocess.Popen(argv, cwd=work, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def driver_results(driver: subprocess.Popen[bytes], work: Path) -> dict[str, DryRun]:
    """Wait for the driver (killing it past DRY_RUN_TIMEOUT_S) and read every scenario's outcome."""
    try:
        out, _ = driver.communicate(timeout=DRY_RUN_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, out.decode(errors="replace")[-3000:]
    results = json.loads((work / "results.json").read_text())
    return {name: DryRun(r["stdout"], r["error"], r["elapsed"]) for name, r in results.items()}


def clean_env() -> dict[str, str]:
    """This environment without the host's metasched config or database (they must not leak in)."""
    return {k: v for k, v in os.environ.items() if k not in ("METASCHED_CONFIG", "METASCHED_DATABASE")}


def metasched_bin() -> str:
    """The project's own `metasched` (TPV's venv is a different environment and has none)."""
    beside = Path(sys.executable).parent / "metasched"
    found = str(beside) if beside.exists() else shutil.which("metasched")
    if not found:
        pytest.fail("no metasched executable next to the test interpreter or on PATH", pytrace=False)
    return str(Path(found).resolve())


# --- two real Slurm clusters, one busy and one idle, collected by the real `metasched collect` -------

BUSY, IDLE = "site_a", "site_b"  # TPV ids; the TPV configs of the tests prefer site_a by tags


@dataclass
class Sites:
    """Two real Slurm clusters behind the real sshd, and a metasched config naming them."""

    clusters: dict[str, SlurmCluster]  # TPV destination id -> cluster
    sshd: SSHServer
    dir: Path

    def config(self, name: str, mapping: Mapping[str, str] | None = None, **extra: Any) -> Path:
        """Write a metasched config with its own database; ``mapping`` says which cluster
        (BUSY or IDLE) each destination id reaches (default: each its own)."""
        mapping = mapping or {d: d for d in self.clusters}
        dests = []
        for dest_id, cluster_id in mapping.items():
            s = self.sshd
            dests.append(
                {
                    "id": dest_id,
                    "scheduler": "slurm",
                    "host": s.host,
                    "port": s.port,
                    "user": s.user,
                    "key_file": str(s.key_file),
                    "known_hosts": str(s.known_hosts),
                    "env": dict(self.clusters[cluster_id].env),
                }
            )
        # Generous state age: TPV's start-up on a loaded machine must not turn the state stale.
        doc = {"database": str(self.dir / f"{name}.db"), "rank": {"max_state_age": 3600}, **extra}
        doc["destinations"] = dests
        path = self.dir / f"{name}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


def collect(config: Path) -> str:
    """`metasched collect -c CONFIG` as the timer runs it; every destination must succeed (exit 0)."""
    done = subprocess.run(
        [metasched_bin(), "collect", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"collect exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fill(cluster: SlurmCluster, queued: int = 4) -> list[str]:
    """Occupy every core of both live nodes with running jobs and queue ``queued`` more behind them."""
    running = [cluster.sbatch(f"fill_{i}", cpus=2, mem="500M") for i in range(4)]
    for jid in running:
        cluster.wait_state(jid, "RUNNING")
    waiting = [cluster.sbatch(f"wait_{i}", cpus=2, mem="500M") for i in range(queued)]
    for jid in waiting:
        cluster.wait_state(jid, "PENDING")
    return running + waiting


@contextlib.contextmanager
def busy_and_idle(sshd: SSHServer, base: Path) -> Iterator[Sites]:
    """Start two fresh test clusters (tests/infra/slurm.py): BUSY full with a queue, IDLE empty."""
    clusters: dict[str, SlurmCluster] = {}
    try:
        clusters[BUSY] = start_slurm()
        clusters[IDLE] = start_slurm()
        fill(clusters[BUSY])
        yield Sites(clusters, sshd, base)
    finally:
        for cluster in clusters.values():
            stop_slurm(cluster)


def status(config: Path) -> dict[str, dict[str, Any]]:
    """`metasched status --json`: what the store says about each destination, by id."""
    done = subprocess.run(
        [metasched_bin(), "status", "--json", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {d["id"]: d for d in json.loads(done.stdout)}


def write_tpv_site(path: Path, **context: object) -> Path:
    """A TPV site config over BUSY and IDLE with NO inline metrics: whatever metasched decides comes
    from its store. The tool prefers the tag "fast", which only BUSY offers, so TPV alone picks BUSY."""
    dest: dict[str, Any] = {"runner": "local", "max_accepted_cores": 8, "max_accepted_mem": 32}
    site = {
        "global": {
            "default_inherits": "default",
            "context": {"metasched_object_store_locations": str(OBJECT_STORES), **context},
        },
        "tools": {"default": {"cores": 2, "mem": 1, "scheduling": {"prefer": ["fast"]}}},
        "destinations": {
            BUSY: {**dest, "scheduling": {"prefer": ["fast"]}, "context": {"latitude": 50.0, "longitude": 8}},
            IDLE: {**dest, "context": {"latitude": 50.1, "longitude": 8.1}},
        },
    }
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


# --- executing a fragment's block without Galaxy -----------------------------------------------------


class FakeDestination:
    """Just what the blocks touch on TPV's Destination."""

    def __init__(self, id: str, score: int, context: dict[str, Any] | None = None) -> None:
        self.id = id
        self._score = score
        self.context = context
        self.max_accepted_cores = 8
        self.max_accepted_mem = 32.0
        self.max_accepted_gpus = None

    def score(self, entity: object) -> int:
        if self._score < 0:
            raise RuntimeError("broken tag score")
        return self._score


class NoDatasets:
    @staticmethod
    def get_dataset_attributes(datasets: object) -> dict[int, dict[str, Any]]:
        raise AttributeError("mock job")


def rank_block(fragment: Path) -> str:
    block: str = yaml.safe_load(fragment.read_text())["tools"]["default"]["rank"]
    return block


def exec_rank_block(block: str, scope: dict[str, Any]) -> Any:
    """Run a `rank:` block the way tpv.core.loader.eval_code_block does: the statements, then the last
    expression, in one namespace (``scope``, which gets TPV's usual names where missing)."""
    tree = ast.parse(block, mode="exec")
    last = tree.body.pop()
    assert isinstance(last, ast.Expr), "TPV needs the block's last statement to be an expression"
    namespace: dict[str, Any] = {
        "entity": object(),
        "job": None,
        "tool": None,
        "helpers": NoDatasets,
        "log": logging.getLogger("test.tpv.rank"),
        **scope,
    }
    exec(compile(tree, "<rank>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<rank>", "eval"), namespace)
