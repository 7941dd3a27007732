"""Rank scenarios (tests/scenarios/rank/*.yml) against a real SQLite store, plus the helpers to build one.

State is written through the Store API as collect would write it: snapshots of nodes and jobs
(two snapshots when history is wanted, so finished jobs are learned the real way) and cached
metric rows. Only the operator "disable" flag is set with plain SQL, because its writer (serve)
is not part of the Store API yet.
"""

from __future__ import annotations

import copy
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.domain.destination import MetricRow
from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Snapshot
from metasched.settings import Config, DestinationConfig, RankSettings, SSHSettings
from metasched.store import Store
from metasched.store.galaxy import tool_key

SCENARIO_DIR = Path(__file__).parent / "scenarios" / "rank"
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def load_scenario(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _node(raw: dict[str, Any], i: int) -> Node:
    return Node(
        name=raw.get("name", f"n{i}"),
        state="idle" if raw.get("available", True) else "down",
        available=raw.get("available", True),
        cores_total=raw.get("cores", 0),
        cores_alloc=raw.get("alloc_cores", 0),
        mem_total_mb=int(raw.get("mem_gb", 0) * 1024),
        mem_alloc_mb=int(raw.get("alloc_mem_gb", 0) * 1024),
        gpus_total=raw.get("gpus", 0),
        gpus_alloc=raw.get("alloc_gpus", 0),
    )


def _jobs(raw: list[dict[str, Any]], prefix: str, now: datetime = NOW) -> list[Job]:
    """``start_s``/``estimated_s``: the scheduler expects the job to start that many seconds after
    ``now``, as computed that many seconds before it (Slurm's StartTime and LastSchedEval)."""
    out = []
    for i, j in enumerate(raw):
        start = None if "start_s" not in j else now + timedelta(seconds=j["start_s"])
        evaluated = None if "estimated_s" not in j else now - timedelta(seconds=j["estimated_s"])
        for k in range(j.get("count", 1)):
            out.append(
                Job(
                    job_id=f"{prefix}{i}_{k}",
                    state=j.get("state", PENDING),
                    cores=j.get("cores", 1),
                    mem_mb=int(j.get("mem_gb", 0) * 1024),
                    gpus=j.get("gpus", 0),
                    name=j.get("name", ""),
                    start_estimate=start,
                    estimated_at=evaluated,
                )
            )
    return out


def _history_jobs(raw: list[dict[str, Any]], end: datetime) -> list[Job]:
    """Running jobs whose disappearance at ``end`` records the wanted queue and run times."""
    out = []
    for i, h in enumerate(raw):
        start = end - timedelta(seconds=h["run_s"])
        for k in range(h.get("count", 1)):
            out.append(
                Job(
                    job_id=f"h{i}_{k}",
                    state=RUNNING,
                    name=f"g{1000 * i + k}_{tool_key(h['tool'])}_alice",
                    submit_time=start - timedelta(seconds=h.get("queue_s", 0)),
                    start_time=start,
                )
            )
    return out


def build_store(db: Path | str, state: dict[str, Any], now: datetime = NOW) -> None:
    """Write every destination's snapshot(s), failures, disables and metric rows into store ``db``."""
    with Store.open(str(db)) as store:
        for dest_id, st in (state.get("destinations") or {}).items():
            last = now - timedelta(seconds=st.get("age_s", 60))
            if "scheduler" in st:  # as collect's sync_destinations records it (default: unknown, "")
                store.sync_destinations([(dest_id, st["scheduler"], "local")])
            nodes = [_node(n, i) for i, n in enumerate(st.get("nodes", []))]
            jobs = _jobs(st.get("jobs", []), "j", now)
            history = st.get("history") or []
            if history:
                first = last - timedelta(seconds=30)
                store.write_snapshot(
                    dest_id,
                    Snapshot(nodes=nodes, jobs=_history_jobs(history, last)),
                    run_id="r0",
                    started=first,
                    finished=first,
                )
            store.write_snapshot(
                dest_id, Snapshot(nodes=nodes, jobs=jobs), run_id="r1", started=last, finished=last
            )
            if "failed" in st:
                store.record_failure(dest_id, st["failed"], run_id="r2", started=now, finished=now)
        by_source: dict[str, list[MetricRow]] = {}
        for m in state.get("metrics") or []:
            observed = now - timedelta(seconds=m.get("age_s", 30))
            row = MetricRow(
                source=m.get("source", "test"),
                destination_id=m["destination_id"],
                name=m["name"],
                value=m.get("value"),
                text=m.get("text"),
                tool_id=m.get("tool_id", ""),
                observed_at=observed,
            )
            by_source.setdefault(row.source, []).append(row)
        for source, rows in by_source.items():
            store.replace_metrics(source, rows, fetched_at=now)
    disabled = {d: st["disabled"] for d, st in (state.get("destinations") or {}).items() if "disabled" in st}
    for dest_id, value in disabled.items():
        reason, until_s = (value, None) if isinstance(value, str) else (value["reason"], value.get("until_s"))
        until = None if until_s is None else (now + timedelta(seconds=until_s)).replace(tzinfo=None)
        _sql(
            str(db),
            "UPDATE destination SET disabled_reason = ?, disabled_until = ? WHERE id = ?",
            (reason, until, dest_id),
        )


def _sql(url: str, statement: str, params: tuple[Any, ...]) -> None:
    """Plain SQL on the store's database (only for what the Store API cannot write yet)."""
    if url.startswith("postgresql://"):
        import psycopg

        conn = psycopg.connect(url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement.replace("?", "%s"), params)
        finally:
            conn.close()
        return
    with sqlite3.connect(url) as lite:
        lite.execute(statement, params)


def scenario_config(raw: dict[str, Any] | None) -> Config:
    """A Config from a scenario's small ``config:`` block (destinations, objectstores, rank)."""
    raw = raw or {}
    dests = tuple(
        DestinationConfig(
            id=d["id"],
            scheduler="slurm",
            host="local",
            ssh=SSHSettings(),
            latitude=d.get("latitude"),
            longitude=d.get("longitude"),
            object_store=d.get("object_store"),
            enabled=d.get("enabled", True),
        )
        for d in raw.get("destinations", [])
    )
    rank = raw.get("rank") or {}
    return Config(
        path=None,
        database=None,
        ssh=SSHSettings(),
        destinations=dests,
        rank=RankSettings(
            max_state_age=rank.get("max_state_age", 300.0),
            weights=dict(rank.get("weights") or {}),
            ledger=rank.get("ledger", True),
            ledger_ttl=rank.get("ledger_ttl", 1800.0),
        ),
        objectstores={k: (v["latitude"], v["longitude"]) for k, v in (raw.get("objectstores") or {}).items()},
    )


def run_scenario(path: Path, tmp_path: Path, url: str | None = None, explain: bool = True) -> dict[str, Any]:
    """Build the scenario's state in ``url`` (default: a SQLite file in tmp_path) and rank its request
    (with ``options.explain: false`` unless ``explain``)."""
    from metasched.app.ranking import rank

    sc = load_scenario(path)
    if not explain:
        options = sc["request"].setdefault("options", {})
        options["explain"] = False
    db = url or str(tmp_path / "state.db")
    build_store(db, sc.get("state") or {})
    config = scenario_config(sc.get("config"))
    with Store.open(db) as store:
        if "steps" in sc:
            return run_steps(sc, config, store, db, check=explain)
        return rank(sc["request"], config, store, NOW)


def run_steps(
    sc: dict[str, Any], config: Config, store: Store, db: str, check: bool = True
) -> dict[str, Any]:
    """Sequential ranks of ``request`` against the one stored state (the placement ledger between them).

    Each step is one of
    ``rank: {job_id: first id, repeat: n, at_s: seconds after NOW, every_s: step between repeats}``
    with optional ``placed: {destination: how many of the n answers placed the job there}`` and
    ``expect`` (checked on the step's last answer), or ``placement: {job_id: id, state: resolved}``,
    set directly in the store as collect's reconciliation would. Returns the last answer. ``check``
    False skips the steps' ``expect`` (they name reasons, which an unexplained answer has not).
    """
    from metasched.app.ranking import rank

    result: dict[str, Any] | None = None
    for i, step in enumerate(sc["steps"]):
        if "placement" in step:
            p = step["placement"]
            resolved = (NOW + timedelta(seconds=p.get("at_s", 0))).replace(tzinfo=None)
            _sql(
                db,
                "UPDATE placement SET state = ?, resolved_at = ? WHERE job_id = ?",
                (p["state"], resolved, str(p["job_id"])),
            )
            continue
        spec = step["rank"]
        placed: dict[str, int] = {}
        for k in range(spec.get("repeat", 1)):
            request = copy.deepcopy(sc["request"])
            job = request.get("job") or request["job_info"]
            if "job_id" in spec:
                job["job_id"] = spec["job_id"] + k
            at = NOW + timedelta(seconds=spec.get("at_s", 0) + k * spec.get("every_s", 0))
            result = rank(request, config, store, at)
            first = next((r["id"] for r in result["ranked"] if r["feasible"]), None)
            if first is not None:
                placed[first] = placed.get(first, 0) + 1
        if "placed" in step:
            assert placed == step["placed"], f"steps[{i}]: placed {placed}"
        if check and "expect" in step and result is not None:
            check_expectations({"expect": step["expect"]}, result)
    assert result is not None, "steps: no rank step"
    return result


def check_expectations(sc: dict[str, Any], result: dict[str, Any]) -> None:
    exp = sc["expect"]
    ranked = {r["id"]: r for r in result["ranked"]}
    if "order" in exp:
        assert result["sorted_destinations"] == exp["order"]
    if "first" in exp:
        assert result["sorted_destinations"][0] == exp["first"]
    for dest, feasible in (exp.get("feasible") or {}).items():
        assert ranked[dest]["feasible"] is feasible, ranked[dest]["reasons"]
    for dest, needles in (exp.get("reasons") or {}).items():
        text = " | ".join(ranked[dest]["reasons"])
        for needle in needles:
            assert needle in text, f"{dest}: {needle!r} not in {text!r}"
    for dest, needles in (exp.get("reasons_absent") or {}).items():
        text = " | ".join(ranked[dest]["reasons"])
        for needle in needles:
            assert needle not in text, f"{dest}: {needle!r} in {text!r}"
    for dest, comps in (exp.get("components") or {}).items():
        for name, value in comps.items():
            got = ranked[dest]["components"][name]
            if value is None:  # null: unknown
                assert got is None, (dest, name, got)
            else:
                assert got == pytest.approx(value, rel=1e-3, abs=1e-3), (dest, name)
    for dest, score in (exp.get("scores") or {}).items():
        assert ranked[dest]["score"] == pytest.approx(score, rel=1e-3, abs=1e-3), dest
    for name in exp.get("absent_components") or []:
        assert all(name not in r["components"] for r in result["ranked"]), name
    for needle in exp.get("absent_reasons") or []:
        assert not any(needle in why for r in result["ranked"] for why in r["reasons"]), needle
    for needle in exp.get("warnings") or []:
        assert any(needle in w for w in result["warnings"]), (needle, result["warnings"])
    if exp.get("no_warnings"):
        assert result["warnings"] == []


SCENARIOS = sorted(SCENARIO_DIR.glob("*.yml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, tmp_path: Path, store_url: str) -> None:
    """Each YAML file: a request, stored state, and the expected order, feasibility and reasons.

    Run on both store backends (``store_url``: a SQLite file, and a fresh PostgreSQL database).
    """
    sc = load_scenario(path)
    result = run_scenario(path, tmp_path, store_url)
    assert sorted(r["id"] for r in result["ranked"]) == sorted(d["id"] for d in _dests(sc["request"]))
    check_expectations(sc, result)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_unexplained(path: Path, tmp_path: Path) -> None:
    """``options.explain: false`` (what the TPV hooks send) answers the same order, components,
    scores and warnings, only without reasons."""
    explained = run_scenario(path, tmp_path, str(tmp_path / "explained.db"))
    plain = run_scenario(path, tmp_path, str(tmp_path / "plain.db"), explain=False)
    assert all("reasons" not in r for r in plain["ranked"])
    assert plain == {
        **explained,
        "ranked": [{k: v for k, v in r.items() if k != "reasons"} for r in explained["ranked"]],
    }


def test_rank_reads_the_store_read_only(tmp_path: Path, store_url: str) -> None:
    """rank's own way of opening the store (short timeouts, read-only) answers on both backends and
    cannot write."""
    from metasched.app.ranking import rank
    from metasched.rank.state import open_existing_store

    path = SCENARIO_DIR / "queue_ahead_of_free.yml"
    sc = load_scenario(path)
    build_store(store_url, sc["state"])
    store, warning = open_existing_store(store_url)
    assert store is not None, warning
    with store:
        check_expectations(sc, rank(sc["request"], scenario_config(None), store, NOW))
        with pytest.raises(Exception, match=r"(?i)read.only|readonly"):
            store.set_setting("x", "y")


def _dests(request: dict[str, Any]) -> list[dict[str, Any]]:
    return list(request.get("destinations") or request.get("current_dest_info") or [])
