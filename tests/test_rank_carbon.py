"""Carbon intensity and electricity price as an opt-in factor (docs/rank.md "Carbon and price").

The energy model on its own, the guarantee that it leaves every answer untouched while its weights
are 0, and the whole path: points in a real InfluxDB 1.6.7, cached by a real ``metasched collect``,
read by a real ``metasched rank``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.domain.errors import InputError
from metasched.rank.energy import energy_cost, energy_kwh, energy_on
from metasched.rank.model import Candidate, JobSpec, Observed
from metasched.rank.score import rank_candidates
from metasched.settings.weights import Weights, make_weights
from metasched.store import Store
from tests.infra.influx import InfluxServer
from tests.test_rank_cli import metasched_cmd
from tests.test_rank_scenarios import NOW, SCENARIOS, build_store, load_scenario, scenario_config

ON = Weights(carbon_s_per_kg=3600.0)
CARBON = "pulsar_carbon_intensity"


def test_energy_is_cores_and_gpus_for_the_run() -> None:
    # (4 x 10 W + 1 x 300 W) for an hour
    assert energy_kwh(JobSpec("t", cores=4, gpus=1), 3600.0, Weights()) == pytest.approx(0.34)
    assert energy_kwh(JobSpec("t", cores=4), 3600.0, Weights(watts_per_core=25.0)) == pytest.approx(0.1)
    assert energy_kwh(JobSpec("t", cores=4), 0.0, Weights()) == 0.0


def test_carbon_seconds_from_intensity() -> None:
    job = JobSpec("t", cores=10)
    energy, why = energy_cost(job, 1800.0, Observed(carbon_g_kwh=400.0), None, None, ON)
    assert energy.kwh == pytest.approx(0.05)
    assert energy.co2_g == pytest.approx(20.0)
    assert energy.carbon_s == pytest.approx(72.0)  # 0.02 kg x 3,600 s/kg
    assert energy.price_s is None  # price weight off: not computed, not shown
    assert energy.seconds == pytest.approx(72.0)
    assert why == ["energy 0.05 kWh (10 cores x 10 W for 1,800 s)", "carbon 20.0 g CO2 at 400 g/kWh: +72 s"]


def test_unknown_intensity_pays_the_median_or_nothing() -> None:
    job = JobSpec("t", cores=10)
    energy, why = energy_cost(job, 1800.0, Observed(), (200.0, 3), None, ON)
    assert energy.co2_g is None and energy.carbon_g_kwh is None
    assert energy.carbon_s == pytest.approx(36.0)
    assert "median of 3 destination(s), 200 g/kWh" in why[-1]
    energy, why = energy_cost(job, 1800.0, Observed(), None, None, ON)
    assert energy.carbon_s == 0.0
    assert why[-1] == "carbon intensity unknown here and at every candidate: no carbon cost"


def test_price_floor_and_gpu_reason() -> None:
    w = Weights(price_s_per_eur=1000.0)
    job = JobSpec("t", cores=2, gpus=1)
    energy, why = energy_cost(job, 3600.0, Observed(price_eur_mwh=-5.0), None, None, w)
    assert energy.kwh == pytest.approx(0.32)
    assert energy.price_eur == 0.0 and energy.price_s == 0.0 and energy.carbon_s is None
    assert "2 cores x 10 W + 1 GPUs x 300 W" in why[0]
    energy, _ = energy_cost(job, 3600.0, Observed(price_eur_mwh=100.0), None, None, w)
    assert energy.price_eur == pytest.approx(0.032)  # 0.32 kWh at 0.1 EUR/kWh
    assert energy.price_s == pytest.approx(32.0)


def test_weights_validated_and_off_by_default() -> None:
    assert not energy_on(Weights())
    assert energy_on(Weights(price_s_per_eur=1.0))
    assert make_weights(("w", {"carbon_s_per_kg": 3600, "watts_per_gpu": 250})).watts_per_gpu == 250.0
    for key, value, message in (
        ("carbon_s_per_kg", -1, "w.carbon_s_per_kg: must be a finite number >= 0"),
        ("watts_per_core", "10", "w.watts_per_core: must be a number"),
        ("carbon_max_age_s", 0, "w.carbon_max_age_s: must be > 0"),
        ("carbon_kg", 1, "w.carbon_kg: unknown weight"),
    ):
        with pytest.raises(InputError, match=message):
            make_weights(("w", {key: value}))


def test_score_adds_carbon_seconds_before_the_tpv_discount() -> None:
    obs = Observed(free_cores=16.0, queued_jobs=0.0, metric_run_s=1800.0, carbon_g_kwh=400.0)
    cands = [Candidate("a", 0, tpv_score=0.0, observed=obs), Candidate("b", 1, tpv_score=10.0, observed=obs)]
    job = JobSpec("t", cores=10)
    off = rank_candidates(job, [], {}, cands, Weights())
    assert all(r.energy is None and r.score <= r.total_s for r in off.ranked)
    on = {r.id: r for r in rank_candidates(job, [], {}, cands, ON).ranked}
    assert on["a"].score == pytest.approx(1805.0 + 72.0)
    assert on["a"].total_s == pytest.approx(1805.0)  # the turnaround itself is unchanged
    tpv = {r.id: r for r in off.ranked}["b"].score / 1805.0
    assert on["b"].score == pytest.approx((1805.0 + 72.0) * tpv)


YML = [p for p in SCENARIOS if p.suffix == ".yml" and not p.stem.startswith(("carbon", "price"))]


@pytest.mark.parametrize("path", YML, ids=[p.stem for p in YML])
def test_off_by_default_leaves_every_answer_unchanged(path: Path, tmp_path: Path) -> None:
    """Every other scenario, with carbon and price cached (and given inline) for every destination
    but the energy weights at 0: the very same answer, reasons and components included."""
    sc = load_scenario(path)
    plain = _rank(sc, tmp_path / "plain.db")
    carbon = copy.deepcopy(sc)
    state = carbon.setdefault("state", None) or {}
    carbon["state"] = state
    metrics = state.setdefault("metrics", None) or []
    state["metrics"] = metrics
    for i, dest in enumerate(carbon["request"].get("destinations") or []):
        for name, value in (("carbon_intensity", 100.0 + 50 * i), ("price_day_ahead", 80.0 - 30 * i)):
            metrics.append(
                {
                    "source": "pulsar_carbon_intensity",
                    "destination_id": dest["id"],
                    "name": name,
                    "value": value,
                }
            )
        if isinstance(dest.get("metrics"), dict):
            dest["metrics"]["carbon_intensity"] = 700.0 - 100 * i
    config = carbon.setdefault("config", None) or {}
    carbon["config"] = config
    rank_cfg = config.setdefault("rank", {})
    rank_cfg["weights"] = {**(rank_cfg.get("weights") or {}), "watts_per_core": 99, "watts_per_gpu": 1}
    assert _rank(carbon, tmp_path / "carbon.db") == plain


def _rank(sc: dict[str, Any], db: Path) -> dict[str, Any]:
    from metasched.app.ranking import rank

    build_store(str(db), sc.get("state") or {})
    with Store.open(str(db)) as store:
        return rank(copy.deepcopy(sc["request"]), scenario_config(sc.get("config")), store, NOW)


# --- the whole path: InfluxDB 1.6.7 -> metasched collect -> metasched rank ---------------------------


def _config(path: Path, influx: InfluxServer, db: Path, weights: dict[str, float] | None = None) -> Path:
    raw: dict[str, Any] = {
        "database": str(db),
        "influxdb": {"url": influx.url, "database": influx.database, "timeout": 5},
        "destinations": [
            {"id": "pulsar_dirty", "scheduler": "node", "host": "local"},
            {"id": "pulsar_clean", "scheduler": "node", "host": "local"},
        ],
    }
    if weights is not None:
        raw["rank"] = {"weights": weights}
    path.write_text(yaml.safe_dump(raw))
    return path


def _request(weights: dict[str, float] | None = None) -> bytes:
    # Both are this machine: pin their state inline so only run time and carbon differ. The clean
    # site is 45 s slower (1,850 s against 1,805 s of turnaround).
    pinned = {"free_cores": 2, "queued": 0}
    req: dict[str, Any] = {
        "job": {"tool_id": "bwa", "cores": 1},
        "destinations": [
            {"id": "pulsar_dirty", "metrics": {**pinned, "median_run_s": 1800}},
            {"id": "pulsar_clean", "metrics": {**pinned, "median_run_s": 1845}},
        ],
    }
    if weights is not None:
        req["options"] = {"weights": weights}
    return json.dumps(req).encode()


def _cli(
    args: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*metasched_cmd(), *args], input=stdin, capture_output=True, env=env, timeout=120, check=False
    )


def test_collect_caches_carbon_and_rank_prefers_the_clean_site(
    influxdb: InfluxServer, tmp_path: Path, env: dict[str, str]
) -> None:
    influx = influxdb.fresh()
    t = int(time.time()) - 120  # collect queries its window back from the wall clock
    influx.write(
        [  # the field's shape: the tag value carries literal quotes
            f'{CARBON},destination_id="pulsar_dirty" carbon_intensity=600,price_day_ahead=95.5 {t}',
            f'{CARBON},destination_id="pulsar_clean" carbon_intensity=50,price_day_ahead=88.1 {t}',
            f'{CARBON},destination_id="pulsar_clean" carbon_intensity=700,price_day_ahead=120 {t - 600}',
        ]
    )
    db = tmp_path / "state.db"
    plain = _config(tmp_path / "plain.yml", influx, db)
    done = _cli(["collect", "--config", str(plain)], env)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    with Store.open(str(db)) as store:
        cached = {
            (r.destination_id, r.name): r.value
            for r in store.metrics(["pulsar_dirty", "pulsar_clean"], "bwa")
            if r.source == "pulsar_carbon_intensity"
        }
    assert cached == {
        ("pulsar_dirty", "carbon_intensity"): 600.0,
        ("pulsar_dirty", "price_day_ahead"): 95.5,
        ("pulsar_clean", "carbon_intensity"): 50.0,  # the newest point
        ("pulsar_clean", "price_day_ahead"): 88.1,
    }

    # Weight 0 (the default): the faster, dirtier site wins and nothing about carbon is said.
    off = _ok(_cli(["rank", "--config", str(plain)], env, _request()))
    assert off["sorted_destinations"] == ["pulsar_dirty", "pulsar_clean"]
    assert all("co2_g" not in r["components"] for r in off["ranked"])
    assert not any("carbon" in why for r in off["ranked"] for why in r["reasons"])

    # 1 core x 10 W: 5.0 Wh at dirty (3.0 g, 108 s at 36,000 s/kg), 5.1 Wh at clean (0.26 g, 9.2 s).
    on = _ok(_cli(["rank", "--config", str(plain)], env, _request({"carbon_s_per_kg": 36000})))
    assert on["sorted_destinations"] == ["pulsar_clean", "pulsar_dirty"]
    comps = {r["id"]: r["components"] for r in on["ranked"]}
    assert comps["pulsar_dirty"]["carbon_g_per_kwh"] == 600.0
    assert comps["pulsar_dirty"]["co2_g"] == pytest.approx(3.0)
    assert comps["pulsar_dirty"]["carbon_s"] == pytest.approx(108.0)
    assert comps["pulsar_clean"]["co2_g"] == pytest.approx(0.25625, abs=1e-3)  # mg precision
    assert comps["pulsar_clean"]["total_s"] == pytest.approx(1850.0)
    assert on["ranked"][0]["score"] == pytest.approx(1850.0 + 9.225, abs=1e-3)

    # The same weight from the config; --explain shows the estimate as columns and reasons.
    weighted = _config(
        tmp_path / "weighted.yml", influx, db, {"carbon_s_per_kg": 36000, "price_s_per_eur": 1}
    )
    shown = _cli(["rank", "--explain", "--config", str(weighted)], env, _request())
    assert _ok(shown)["sorted_destinations"] == ["pulsar_clean", "pulsar_dirty"]
    table = shown.stderr.decode()
    head = table.splitlines()[0].split()
    assert head[6:10] == ["co2_g", "carbon_s", "price_eur", "price_s"], head
    assert "carbon 3.0 g CO2 at 600 g/kWh: +108 s" in table
    assert "EUR at 88.1 EUR/MWh" in table


def _ok(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
