"""Seed-2 policies in ranking: pure adjustments, scenarios (tests/scenarios/policy/*.yml) through
``metasched.rank.rank`` and the real ``metasched rank`` command on real SQLite stores, and runtime
changes with ``metasched policy set`` seen by rank, ``policy show`` and ``status``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.app.policy_ranking import DYNAMIC_MAX, DYNAMIC_MIN, Usage, adjust
from metasched.policy import ActivePolicy, PolicyOverride, apply_override, weights
from metasched.rank.model import Outcome, Ranked
from metasched.settings import PolicyConfig, load_config
from metasched.store import Store
from tests.test_rank_cli import metasched_cmd
from tests.test_rank_scenarios import NOW, build_store, check_expectations, load_scenario

POLICY_DIR = Path(__file__).parent / "scenarios" / "policy"
SCENARIOS = sorted(POLICY_DIR.glob("*.yml"))


def _ranked(dest_id: str, score: float, index: int, feasible: bool = True) -> Ranked:
    return Ranked(
        id=dest_id,
        index=index,
        feasible=feasible,
        score=score,
        staging_s=0.0,
        queue_s=5.0,
        run_s=score - 5.0,
        total_s=score,
        tpv_score=0.0,
        staged_bytes=0.0,
        local_bytes=0.0,
        reasons=(),
    )


def _active(name: str, dests: tuple[str, ...], **kw: Any) -> ActivePolicy:
    return ActivePolicy(dests[0], PolicyConfig(name=name, destinations=dests, **kw), "config")


def _outcome(*scores: tuple[str, float]) -> Outcome:
    return Outcome(tuple(_ranked(d, s, i) for i, (d, s) in enumerate(scores)), ())


def test_weights_default_to_equal_shares_and_missing_ones_get_the_rest() -> None:
    assert weights(PolicyConfig("shared", ("a", "b", "c", "d"))) == dict.fromkeys("abcd", 25.0)
    w = weights(PolicyConfig("shared", ("a", "b", "c"), weights={"a": 60, "b": 20}))
    assert w == {"a": 60.0, "b": 20.0, "c": 20.0}


def test_shared_scales_score_in_seconds_and_explains() -> None:
    policy = _active("shared", ("a", "b"), weights={"a": 20, "b": 80})
    out = adjust(_outcome(("a", 1000.0), ("b", 1500.0)), [policy], {})
    by_id = {r.id: r for r in out.ranked}
    assert [r.id for r in out.ranked] == ["b", "a"]
    assert by_id["a"].score == pytest.approx(2500.0)  # 1000 x 50/20
    assert by_id["b"].score == pytest.approx(937.5)  # 1500 x 50/80
    assert by_id["a"].total_s == 1000.0  # the model's estimate stays as it was
    assert "effective turnaround x2.50 = 2,500 s (+1,500 s)" in by_id["a"].reasons[-1]


def test_dynamic_factor_is_bounded() -> None:
    policy = _active("dynamic", ("a", "b"), weights={"a": 10, "b": 90})
    usage = {"a": Usage(jobs=9, cores=90), "b": Usage(jobs=1, cores=10)}
    out = adjust(_outcome(("a", 100.0), ("b", 100.0)), [policy], usage)
    by_id = {r.id: r for r in out.ranked}
    # a: shared x5 (50/10), uses 90 % of a 10 % share -> x9, bounded to DYNAMIC_MAX
    assert by_id["a"].score == pytest.approx(100 * 5 * DYNAMIC_MAX)
    # b: shared x0.556, uses 10 % of a 90 % share -> x0.11, bounded to DYNAMIC_MIN
    assert by_id["b"].score == pytest.approx(100 * 50 / 90 * DYNAMIC_MIN)


def test_dynamic_with_unknown_usage_is_plain_shared() -> None:
    policy = _active("dynamic", ("a", "b"), weights={"a": 50, "b": 50})
    out = adjust(_outcome(("a", 100.0), ("b", 120.0)), [policy], {"a": Usage(3, 3), "b": None})
    assert [r.score for r in out.ranked] == [100.0, 120.0]
    assert "group usage unknown" in out.ranked[0].reasons[-1]


def test_exclusive_keeps_members_that_run_jobs_feasible() -> None:
    """Two members running at once (a policy switch): neither is locked out, the idle third is."""
    policy = _active("exclusive", ("a", "b", "c"))
    usage = {"a": Usage(1, 1), "b": Usage(2, 2), "c": Usage(0, 0)}
    out = adjust(_outcome(("a", 300.0), ("b", 200.0), ("c", 100.0)), [policy], usage)
    assert [(r.id, r.feasible) for r in out.ranked] == [("b", True), ("a", True), ("c", False)]
    assert out.ranked[2].reasons[0] == "exclusive: nodes busy with a, b"


def test_best_effort_does_nothing_when_high_priority_is_infeasible() -> None:
    policy = _active("best_effort", ("a", "b"), high_priority="b")
    base = Outcome((_ranked("a", 100.0, 0), _ranked("b", 50.0, 1, feasible=False)), ())
    out = adjust(base, [policy], {})
    assert [r.id for r in out.ranked] == ["a", "b"]
    assert out.ranked[0].reasons == ()


def test_destinations_outside_groups_and_absent_members_pass_through() -> None:
    policy = _active("shared", ("a", "z"), weights={"a": 50, "z": 50})
    out = adjust(_outcome(("x", 10.0), ("a", 20.0)), [policy], {})
    assert [(r.id, r.score) for r in out.ranked] == [("x", 10.0), ("a", 20.0)]


def test_runtime_override_replaces_name_and_high_priority() -> None:
    policy = PolicyConfig("shared", ("a", "b"), high_priority="a")
    override = PolicyOverride("best_effort", "b", "alice (cli)", "2026-11-23T12:00:00Z", "shared")
    active = apply_override(policy, override)
    assert (active.name, active.config.high_priority, active.source) == ("best_effort", "b", "runtime")


def _write_config(sc: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({**sc["config"], "database": str(tmp_path / "state.db")}))
    return path


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, tmp_path: Path) -> None:
    """Each policy scenario through ``rank()`` with the config loaded from a real YAML file."""
    from metasched.app.ranking import rank

    sc = load_scenario(path)
    cfg = load_config(_write_config(sc, tmp_path), {})
    build_store(tmp_path / "state.db", sc["state"])
    with Store.open(str(tmp_path / "state.db")) as store:
        result = rank(sc["request"], cfg, store, NOW)
    check_expectations(sc, result)


def _cli(
    args: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*metasched_cmd(), *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _fresh_state(sc: dict[str, Any], tmp_path: Path) -> None:
    """The scenario's state collected just now (the CLI ranks at the wall clock, not at NOW)."""
    from datetime import UTC, datetime

    build_store(tmp_path / "state.db", sc["state"], now=datetime.now(UTC))


@pytest.mark.parametrize("name", ["exclusive", "best_effort", "shared", "dynamic"])
def test_scenario_through_metasched_rank(name: str, tmp_path: Path, env: dict[str, str]) -> None:
    sc = load_scenario(POLICY_DIR / f"{name}.yml")
    config = _write_config(sc, tmp_path)
    _fresh_state(sc, tmp_path)
    res = _cli(["rank", "-c", str(config)], env, json.dumps(sc["request"]).encode())
    assert res.returncode == 0, res.stderr
    check_expectations(sc, json.loads(res.stdout))


def test_policy_set_is_persisted_and_seen_by_rank_show_and_status(
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """The dynamic scenario's group switched to exclusive at runtime: slurm_a runs jobs, so sge_b
    is locked out; `policy show` and `status --json` say it is a runtime override and who set it."""
    sc = load_scenario(POLICY_DIR / "dynamic.yml")
    config = _write_config(sc, tmp_path)
    _fresh_state(sc, tmp_path)
    env = {**env, "USER": "alice", "SUDO_USER": "alice"}
    res = _cli(["policy", "set", "exclusive", "--group", "sge_b", "-c", str(config)], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "slurm_a: dynamic -> exclusive (runtime)"
    assert "policy of group slurm_a changed by alice (cli) at " in res.stderr
    assert ": dynamic -> exclusive (high_priority None -> None)" in res.stderr

    # both run jobs: neither is locked out; stop sge_b's job and it is
    sc["state"]["destinations"]["sge_b"]["jobs"] = []
    _fresh_state(sc, tmp_path)
    ranked = json.loads(_cli(["rank", "-c", str(config)], env, json.dumps(sc["request"]).encode()).stdout)
    by_id = {r["id"]: r for r in ranked["ranked"]}
    assert by_id["sge_b"]["feasible"] is False
    assert "exclusive: nodes busy with slurm_a" in by_id["sge_b"]["reasons"]

    shown = json.loads(_cli(["policy", "show", "--json", "-c", str(config)], env).stdout)
    (group,) = shown["policies"]
    assert (group["name"], group["source"], group["previous"]) == ("exclusive", "runtime", "dynamic")
    assert group["changed_by"] == "alice (cli)"

    status = json.loads(_cli(["status", "--json", "-c", str(config)], env).stdout)
    rows = {r["id"]: r for r in status}
    assert rows["sge_b"]["policy"] == {"group": "slurm_a", "name": "exclusive", "source": "runtime"}
    table = _cli(["status", "-c", str(config)], env).stdout
    assert "policy exclusive (slurm_a, runtime)" in table

    # back to the config's own policy: the override is gone
    res = _cli(["policy", "set", "dynamic", "-c", str(config)], env)
    assert res.stdout.strip() == "slurm_a: exclusive -> dynamic (config)"
    shown = json.loads(_cli(["policy", "show", "--json", "-c", str(config)], env).stdout)
    assert shown["policies"][0]["source"] == "config"


def test_policy_set_rejects_bad_input(tmp_path: Path, env: dict[str, str]) -> None:
    sc = load_scenario(POLICY_DIR / "shared.yml")
    config = _write_config(sc, tmp_path)
    cases = [
        (["policy", "set", "fair_share"], "policy: must be one of exclusive, best_effort, shared, dynamic"),
        (["policy", "set", "shared", "--group", "nowhere"], "--group: no node group contains destination"),
        (["policy", "set", "best_effort"], "best_effort needs a high-priority destination"),
        (["policy", "set", "best_effort", "--high-priority", "x"], "is not a destination of group"),
    ]
    for args, message in cases:
        res = _cli([*args, "-c", str(config)], env)
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr
        assert res.stdout == ""


def test_config_check_rejects_a_bad_weight_sum(tmp_path: Path, env: dict[str, str]) -> None:
    """One CLI check of the validation config.py does (its own tests cover every rule)."""
    sc = load_scenario(POLICY_DIR / "shared.yml")
    sc["config"]["policies"][0]["weights"]["sge_b"] = 10
    res = _cli(["config", "check", "-c", str(_write_config(sc, tmp_path))], env)
    assert res.returncode == 2
    assert "policies[0].weights: must sum to 100, got 110" in res.stdout + res.stderr
