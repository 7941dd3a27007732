"""End to end: TPV's own `tpv dry-run` maps a job with the examples/tpv fragment, whose `rank:` block
calls the real `metasched rank` of this project's environment.

TPV (with Galaxy) lives in its own venv (tests/infra/tpv.py). Importing Galaxy costs ~12 s, so every
scenario runs through TPV's CLI entry point (`tpv.commands.shell.main`, exactly what the `tpv` script
calls) in one driver process inside that venv; the headline scenario also runs through the `tpv`
console script itself, concurrently. Failing `metasched` binaries are small shell stand-ins: a
missing binary, a non-zero exit, garbage, a hang past the timeout, unknown ids, a partial answer;
the real binary also fails once (invalid config) and must not win either.

From collected state: two real Slurm test clusters behind the real sshd, one full with a queue and
one idle, collected by the real `metasched collect`; those TPV configs carry no inline metrics, so
the winner can only come from the store, and it flips when the store says the other way round.

The fast tests at the end exec the block the way TPV's loader does (statements, then the last
expression, in one namespace) with stand-in candidates, for what a dry-run cannot show: the full
order, duplicate ids, a raising score. They need no Galaxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.procs import wait_for
from tests.infra.sshd import SSHServer
from tests.infra.tpv import (
    BUSY,
    DRY_RUN_TIMEOUT_S,
    IDLE,
    JOB_CONF,
    DryRun,
    FakeDestination,
    Sites,
    busy_and_idle,
    clean_env,
    collect,
    driver_results,
    dry_run_argv,
    ensure_tpv_env,
    exec_rank_block,
    metasched_bin,
    rank_block,
    start_driver,
    status,
    write_tpv_site,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tpv"
FRAGMENT = EXAMPLES / "metasched_rank.yml"
OBJECT_STORES = EXAMPLES / "object_store_locations.yml"
STAND_IN_SLEEP_S = 3600  # the slow stand-in's child: far longer than the test, so only a kill ends it

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
        f'sleep {STAND_IN_SLEEP_S} &\necho $! > "$(dirname "$0")/slow.pid"\nwait $!\n'
        'echo \'{"sorted_destinations": ["site_b", "site_a"]}\'\n'
    ),
    "unknown": 'echo \'{"sorted_destinations": ["site_b", "elsewhere"]}\'\n',
    "partial": 'cat > "$(dirname "$0")/partial.request.json"\necho \'{"sorted_destinations": ["site_b"]}\'\n',
}


@dataclass(frozen=True)
class Runs:
    workdir: Path
    cli: DryRun
    driver: dict[str, DryRun]
    state: Path  # metasched config: site_a reaches the busy cluster, site_b the idle one
    mirror: Path  # the same clusters the other way round


def _write_site(path: Path, **context: object) -> Path:
    site = json.loads(json.dumps(SITE))
    site["global"]["context"] = {"metasched_object_store_locations": str(OBJECT_STORES), **context}
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sites(sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    with busy_and_idle(sshd, tmp_path_factory.mktemp("tpv-sites")) as s:
        yield s


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, sites: Sites) -> Runs:
    tpv = ensure_tpv_env()
    work = tmp_path_factory.mktemp("tpv-e2e")
    job_conf = work / "job_conf.yml"
    job_conf.write_text(JOB_CONF)
    metasched = metasched_bin()
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
        "tpv-alone": dry_run_argv(job_conf, real),
        "metasched": dry_run_argv(job_conf, FRAGMENT, real),
        "metasched-bad-config": dry_run_argv(
            job_conf,
            FRAGMENT,
            _write_site(
                work / "site-bad.yml",
                metasched_bin=metasched,
                metasched_config=str(bad_config),
                metasched_timeout=10,
            ),
        ),
        "missing": dry_run_argv(
            job_conf, FRAGMENT, _write_site(work / "site-missing.yml", metasched_bin=str(work / "nope"))
        ),
    }
    for name, body in STAND_INS.items():
        script = work / f"{name}.sh"
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
        timeout = 1 if name == "slow" else 10
        site = _write_site(work / f"site-{name}.yml", metasched_bin=str(script), metasched_timeout=timeout)
        scenarios[name] = dry_run_argv(job_conf, FRAGMENT, site)

    # From collected state only: the real `metasched collect` fills each store just before TPV runs.
    state = sites.config("state")
    mirror = sites.config("mirror", {BUSY: IDLE, IDLE: BUSY})
    for config in (state, mirror):
        collect(config)
        collected = write_tpv_site(
            work / f"site-{config.stem}.yml",
            metasched_bin=metasched,
            metasched_config=str(config),
            metasched_timeout=10,
        )
        scenarios[f"collected-{config.stem}"] = dry_run_argv(job_conf, FRAGMENT, collected)
    scenarios["collected-tpv-alone"] = dry_run_argv(job_conf, work / "site-state.yml")

    # Neither the host's metasched config nor its database may leak into the real binary's answer.
    env = clean_env()
    # Galaxy runs with PYTHONPATH=lib; the block must not hand it to metasched. A shadowing package
    # on it would break the real binary, and so the headline scenario, if it did.
    shadow = work / "galaxy-lib" / "metasched"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('Galaxy PYTHONPATH leaked into metasched')\n")
    env["PYTHONPATH"] = str(shadow.parent)
    driver = start_driver(tpv, work, scenarios, env)
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
    finally:
        results = driver_results(driver, work)
    assert cli.returncode == 0, f"tpv dry-run failed:\n{cli.stdout}\n{cli.stderr[-3000:]}"
    return Runs(workdir=work, cli=DryRun(cli.stdout), driver=results, state=state, mirror=mirror)


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
    """The stand-in's child sleeps far longer than the test: if it is gone, the block killed it."""
    pid = int((runs.workdir / "slow.pid").read_text())

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    try:
        wait_for(gone, timeout=10, what=f"stand-in child {pid} to be killed")
    finally:
        if not gone():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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


@pytest.mark.slow
def test_collected_state_is_what_the_clusters_show(runs: Runs) -> None:
    """The premise, from the store the real collect filled: site_a full with a queue, site_b idle."""
    busy, idle = (status(runs.state)[d] for d in (BUSY, IDLE))
    assert busy["reachable"] and idle["reachable"]
    assert busy["cores_free"] == 0 and busy["jobs_running"] == 4 and busy["jobs_queued"] == 4
    assert idle["cores_free"] == idle["cores_total"] == 8 and idle["jobs_running"] == idle["jobs_queued"] == 0
    mirrored = status(runs.mirror)
    assert mirrored[IDLE]["cores_free"] == 0 and mirrored[BUSY]["cores_free"] == 8


@pytest.mark.slow
def test_collected_state_decides_without_inline_metrics(runs: Runs) -> None:
    """TPV's tags prefer site_a; the stored state alone sends the job to the idle cluster, whichever id
    it has."""
    assert runs.driver["collected-tpv-alone"].winner == BUSY
    for name, idle_id in (("state", IDLE), ("mirror", BUSY)):
        assert "metasched_metrics" not in (runs.workdir / f"site-{name}.yml").read_text()
        run = runs.driver[f"collected-{name}"]
        assert not run.fell_back, run.stdout
        assert run.winner == idle_id, name


def _run_block(candidates: list[FakeDestination], answer: str, tmp_path: Path) -> list[str]:
    """Exec the fragment's block like tpv.core.loader.eval_code_block, with a stand-in metasched."""
    script = tmp_path / "metasched"
    script.write_text(f"#!/bin/sh\ncat > \"{tmp_path}/request.json\"\nprintf '%s' '{answer}'\n")
    script.chmod(0o755)
    scope: dict[str, Any] = {
        "candidate_destinations": candidates,
        "cores": 4,
        "metasched_bin": str(script),
        "metasched_timeout": 10,
    }
    ranked = exec_rank_block(rank_block(FRAGMENT), scope)
    return [d.id for d in ranked]


def test_block_never_names_input_size() -> None:
    """TPV computes the job's input size before the block whenever that text appears in it."""
    assert "input_size" not in rank_block(FRAGMENT)


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
