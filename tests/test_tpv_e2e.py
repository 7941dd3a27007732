"""End to end: TPV's own `tpv dry-run` maps a job with the examples/tpv fragment, whose `rank:` block
calls the real `metasched rank` of this project's environment.

TPV (with Galaxy) lives in its own venv (tests/infra/tpv.py). Importing Galaxy costs ~12 s, so every
scenario runs through TPV's CLI entry point (`tpv.commands.shell.main`, exactly what the `tpv` script
calls) in one driver process inside that venv; the headline scenario also runs through the `tpv`
console script itself, concurrently. Failing `metasched` binaries are small shell stand-ins: a
missing binary, a non-zero exit, garbage, a hang past the timeout, unknown ids, a partial answer;
the real binary also fails once (invalid config) and must not win either.

The fast tests at the end exec the block the way TPV's loader does (statements, then the last
expression, in one namespace) with stand-in candidates, for what a dry-run cannot show: the full
order, duplicate ids, a raising score. They need no Galaxy.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.procs import wait_for
from tests.infra.tpv import ensure_tpv_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tpv"
FRAGMENT = EXAMPLES / "metasched_rank.yml"
OBJECT_STORES = EXAMPLES / "object_store_locations.yml"
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

# TPV's tags prefer site_a (the tool prefers "fast", only site_a offers it); the inline metrics say
# site_a has a long queue and no free cores while site_b is idle, so metasched picks site_b.
SITE: dict[str, Any] = {
    "global": {"default_inherits": "default"},
    "tools": {"default": {"cores": 2, "mem": 4, "scheduling": {"prefer": ["fast"]}}},
    "destinations": {
        "site_a": {
            "runner": "local",
            "max_accepted_cores": 8,
            "max_accepted_mem": 32,
            "scheduling": {"prefer": ["fast"]},
            "context": {
                "latitude": 50.0,
                "longitude": 8.0,
                "metasched_metrics": {
                    "queued": 400,
                    "running": 50,
                    "free_cores": 0,
                    "free_mem_gb": 0,
                    "median_queue_s": 7200,
                },
            },
        },
        "site_b": {
            "runner": "local",
            "max_accepted_cores": 8,
            "max_accepted_mem": 32,
            "context": {
                "latitude": 50.1,
                "longitude": 8.1,
                "metasched_metrics": {
                    "queued": 0,
                    "running": 0,
                    "free_cores": 64,
                    "free_mem_gb": 256,
                    "median_queue_s": 5,
                },
            },
        },
    },
}

STAND_INS = {
    "exit": "echo 'metasched: something broke' >&2\nexit 3\n",
    "garbage": "echo '<html>502 Bad Gateway</html>'\n",
    # Would answer site_b, but only after the timeout: its child's pid proves the whole group is killed.
    "slow": (
        'sleep 30 &\necho $! > "$(dirname "$0")/slow.pid"\nwait $!\n'
        'echo \'{"sorted_destinations": ["site_b", "site_a"]}\'\n'
    ),
    "unknown": 'echo \'{"sorted_destinations": ["site_b", "elsewhere"]}\'\n',
    "partial": 'cat > "$(dirname "$0")/partial.request.json"\necho \'{"sorted_destinations": ["site_b"]}\'\n',
}


@dataclass(frozen=True)
class DryRun:
    stdout: str
    error: str | None = None

    @property
    def winner(self) -> str:
        """The id of the JobDestination that dry-run printed (as YAML) on stdout."""
        ids = re.findall(r"^id: (\S+)$", self.stdout, flags=re.MULTILINE)
        assert len(ids) == 1, (
            f"expected one destination in dry-run output (error={self.error}):\n{self.stdout}"
        )
        return ids[0]

    @property
    def fell_back(self) -> bool:
        return FALLBACK_LOG in self.stdout


@dataclass(frozen=True)
class Runs:
    workdir: Path
    cli: DryRun
    driver: dict[str, DryRun]


def _metasched_bin() -> str:
    """The project's own `metasched` (TPV's venv is a different environment and has none)."""
    beside = Path(sys.executable).parent / "metasched"
    found = str(beside) if beside.exists() else shutil.which("metasched")
    if not found:
        pytest.fail("no metasched executable next to the test interpreter or on PATH", pytrace=False)
    return str(Path(found).resolve())


def _write_site(path: Path, **context: object) -> Path:
    site = json.loads(json.dumps(SITE))
    site["global"]["context"] = {"metasched_object_store_locations": str(OBJECT_STORES), **context}
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def _dry_run_argv(job_conf: Path, *configs: Path) -> list[str]:
    """`tpv -v dry-run ...`: -v lets the block's warnings through to stdout, where TPV logs."""
    args = ["-v", "dry-run", "--job-conf", str(job_conf), "--tool", "bwa", "--input-size", "3"]
    return args + [str(c) for c in configs]


DRIVER = """\
import contextlib, io, json, sys
from tpv.commands.shell import main

scenarios_file, results_file = sys.argv[1:3]
scenarios = json.load(open(scenarios_file))
results = {}
for name, argv in scenarios.items():
    out = io.StringIO()
    sys.argv = ["tpv", *argv]
    error = None
    try:
        with contextlib.redirect_stdout(out):
            main()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
    results[name] = {"stdout": out.getvalue(), "error": error}
json.dump(results, open(results_file, "w"))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    tpv = ensure_tpv_env()
    work = tmp_path_factory.mktemp("tpv-e2e")
    job_conf = work / "job_conf.yml"
    job_conf.write_text(JOB_CONF)
    metasched = _metasched_bin()
    ms_config = work / "metasched.yml"
    ms_config.write_text(
        yaml.safe_dump(
            {
                "database": str(work / "metasched.db"),
                "destinations": [{"id": "site_a", "scheduler": "node", "host": "local"}],
            }
        )
    )
    bad_config = work / "bad-metasched.yml"
    bad_config.write_text("destinations: 3\n")

    # Generous timeouts except where the timeout is the point: a loaded CI machine must not turn a
    # scenario into a different failure.
    real = _write_site(
        work / "site-real.yml", metasched_bin=metasched, metasched_config=str(ms_config), metasched_timeout=10
    )
    scenarios: dict[str, list[str]] = {
        "tpv-alone": _dry_run_argv(job_conf, real),
        "metasched": _dry_run_argv(job_conf, FRAGMENT, real),
        "metasched-bad-config": _dry_run_argv(
            job_conf,
            FRAGMENT,
            _write_site(
                work / "site-bad.yml",
                metasched_bin=metasched,
                metasched_config=str(bad_config),
                metasched_timeout=10,
            ),
        ),
        "missing": _dry_run_argv(
            job_conf, FRAGMENT, _write_site(work / "site-missing.yml", metasched_bin=str(work / "nope"))
        ),
    }
    for name, body in STAND_INS.items():
        script = work / f"{name}.sh"
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
        timeout = 1 if name == "slow" else 10
        site = _write_site(work / f"site-{name}.yml", metasched_bin=str(script), metasched_timeout=timeout)
        scenarios[name] = _dry_run_argv(job_conf, FRAGMENT, site)
    (work / "scenarios.json").write_text(json.dumps(scenarios))
    (work / "driver.py").write_text(DRIVER)

    # Neither the host's metasched config nor its database may leak into the real binary's answer.
    env = {k: v for k, v in os.environ.items() if k not in ("METASCHED_CONFIG", "METASCHED_DATABASE")}
    # Galaxy runs with PYTHONPATH=lib; the block must not hand it to metasched. A shadowing package
    # on it would break the real binary, and so the headline scenario, if it did.
    shadow = work / "galaxy-lib" / "metasched"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('Galaxy PYTHONPATH leaked into metasched')\n")
    env["PYTHONPATH"] = str(shadow.parent)
    driver_cmd = [str(tpv.python), "driver.py", "scenarios.json", "results.json"]
    driver = subprocess.Popen(driver_cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        cli = subprocess.run(
            [str(tpv.tpv), *scenarios["metasched"]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=DRY_RUN_TIMEOUT_S,
            check=False,
        )
        driver_out, _ = driver.communicate(timeout=DRY_RUN_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert cli.returncode == 0, f"tpv dry-run failed:\n{cli.stdout}\n{cli.stderr[-3000:]}"
    assert driver.returncode == 0, driver_out.decode(errors="replace")[-3000:]
    results = json.loads((work / "results.json").read_text())
    return Runs(
        workdir=work,
        cli=DryRun(cli.stdout),
        driver={name: DryRun(r["stdout"], r["error"]) for name, r in results.items()},
    )


@pytest.mark.slow
def test_tpv_alone_prefers_site_a_by_tags(runs: Runs) -> None:
    assert runs.driver["tpv-alone"].winner == "site_a"


@pytest.mark.slow
def test_tpv_dry_run_cli_follows_metasched(runs: Runs) -> None:
    """The real `tpv` script and the real `metasched` binary: metasched's queue estimate beats the tags."""
    assert runs.cli.winner == "site_b"
    assert not runs.cli.fell_back, runs.cli.stdout


@pytest.mark.slow
def test_entry_point_agrees_with_cli(runs: Runs) -> None:
    assert runs.driver["metasched"].winner == "site_b"
    assert not runs.driver["metasched"].fell_back


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "why"),
    [
        ("missing", "FileNotFoundError"),
        ("metasched-bad-config", "exit 2"),
        ("exit", "exit 3: metasched: something broke"),
        ("garbage", "JSONDecodeError"),
        ("slow", "TimeoutExpired"),
        ("unknown", "unknown or repeated ids: ['elsewhere']"),
    ],
)
def test_failing_metasched_keeps_tpv_order(runs: Runs, scenario: str, why: str) -> None:
    run = runs.driver[scenario]
    assert run.winner == "site_a"
    assert run.fell_back, run.stdout
    assert why in run.stdout


@pytest.mark.slow
def test_timeout_kills_metasched_and_its_children(runs: Runs) -> None:
    pid = int((runs.workdir / "slow.pid").read_text())

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    wait_for(gone, timeout=10, what=f"stand-in child {pid} to be killed")


@pytest.mark.slow
def test_partial_answer_leads_and_request_carries_job_and_locations(runs: Runs) -> None:
    """Ids metasched leaves out keep TPV order after the ones it ranked; check what the block sent."""
    run = runs.driver["partial"]
    assert run.winner == "site_b"
    assert not run.fell_back, run.stdout

    request = json.loads((runs.workdir / "partial.request.json").read_text())
    assert request["job"] == {"tool_id": "bwa", "job_id": request["job"]["job_id"], "cores": 2, "mem": 4}
    dests = request["destinations"]
    assert [d["id"] for d in dests] == ["site_a", "site_b"]
    assert dests[0]["tpv_score"] > dests[1]["tpv_score"]
    assert dests[0]["metrics"]["queued"] == 400
    assert (dests[1]["latitude"], dests[1]["longitude"]) == (50.1, 8.1)
    assert dests[0]["max_accepted_mem"] == 32
    assert [d["size"] for d in request["datasets"].values()] == [3 * 1024**3]
    assert request["objectstores"] == yaml.safe_load(OBJECT_STORES.read_text())


class FakeDestination:
    """Just what the block touches on TPV's Destination."""

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


def _rank_block() -> str:
    block: str = yaml.safe_load(FRAGMENT.read_text())["tools"]["default"]["rank"]
    return block


def _run_block(candidates: list[FakeDestination], answer: str, tmp_path: Path) -> list[str]:
    """Exec the fragment's block like tpv.core.loader.eval_code_block, with a stand-in metasched."""
    script = tmp_path / "metasched"
    script.write_text(f"#!/bin/sh\ncat > \"{tmp_path}/request.json\"\nprintf '%s' '{answer}'\n")
    script.chmod(0o755)
    tree = ast.parse(_rank_block(), mode="exec")
    last = tree.body.pop()
    assert isinstance(last, ast.Expr), "TPV needs the block's last statement to be an expression"
    scope: dict[str, Any] = {
        "candidate_destinations": candidates,
        "entity": object(),
        "job": None,
        "tool": None,
        "helpers": NoDatasets,
        "log": logging.getLogger("test.tpv.rank"),
        "cores": 4,
        "metasched_bin": str(script),
        "metasched_timeout": 10,
    }
    exec(compile(tree, "<rank>", "exec"), scope)
    ranked = eval(compile(ast.Expression(last.value), "<rank>", "eval"), scope)
    return [d.id for d in ranked]


def test_block_never_names_input_size() -> None:
    """TPV computes the job's input size before the block whenever that text appears in it."""
    assert "input_size" not in _rank_block()


def test_block_full_order_puts_unranked_candidates_last_in_tpv_order(tmp_path: Path) -> None:
    cands = [FakeDestination("low", 1), FakeDestination("high", 5), FakeDestination("mid", 3)]
    assert _run_block(cands, '{"sorted_destinations": ["low"]}', tmp_path) == ["low", "high", "mid"]
    request = json.loads((tmp_path / "request.json").read_text())
    assert request["job"] == {"cores": 4}
    assert request["datasets"] == {}
    assert [d["tpv_score"] for d in request["destinations"]] == [5, 3, 1]


@pytest.mark.parametrize(
    "answer",
    [
        '{"sorted_destinations": ["mid", "mid"]}',
        '{"sorted_destinations": "mid"}',
        '{"sorted_destinations": [1, 2]}',
        '{"ranked": []}',
        "[]",
        "",
    ],
)
def test_block_malformed_answers_keep_tpv_order(tmp_path: Path, answer: str) -> None:
    cands = [FakeDestination("low", 1), FakeDestination("high", 5), FakeDestination("mid", 3)]
    assert _run_block(cands, answer, tmp_path) == ["high", "mid", "low"]


def test_block_survives_a_raising_tag_score(tmp_path: Path) -> None:
    cands = [FakeDestination("a", -1), FakeDestination("b", 2)]
    assert _run_block(cands, '{"sorted_destinations": ["b", "a"]}', tmp_path) == ["a", "b"]


def test_block_single_candidate_does_not_call_metasched(tmp_path: Path) -> None:
    assert _run_block([FakeDestination("only", 1)], '{"sorted_destinations": []}', tmp_path) == ["only"]
    assert not (tmp_path / "request.json").exists()
