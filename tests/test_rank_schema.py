"""The JSON Schemas in metasched/schemas describe what the code accepts and produces; both are generated
from the contract's Structs (metasched.rank.schema) and must be committed as generated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from metasched.rank.answer import RankResponseOut
from metasched.rank.request import METRIC_KEYS, OPTION_KEYS
from metasched.rank.schema import main as schema_main
from metasched.rank.schema import render
from metasched.settings.weights import DEFAULT_WEIGHTS
from tests.test_rank_scenarios import SCENARIO_DIR, load_scenario, run_scenario

SCHEMAS = Path(__file__).parents[1] / "metasched" / "schemas"


def schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(data)
    return data


@pytest.mark.parametrize("name", ["rank-request.json", "rank-response.json"])
def test_committed_schemas_are_the_generated_ones(name: str) -> None:
    """Regenerate with `python -m metasched.rank.schema` after changing metasched/rank/wire.py."""
    assert (SCHEMAS / name).read_text() == render(name)


def test_schema_check_fails_on_a_stale_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema_main(["--check"]) == 0
    monkeypatch.setattr("metasched.rank.schema.render", lambda name: "{}\n")
    assert schema_main(["--check"]) == 1


def test_schema_lists_match_the_code() -> None:
    defs = schema("rank-request.json")["$defs"]
    assert set(defs["OptionsIn"]["properties"]) == OPTION_KEYS
    assert set(defs["WeightsIn"]["properties"]) == set(DEFAULT_WEIGHTS)
    assert set(defs["MetricsIn"]["properties"]) == METRIC_KEYS


def test_seed_request_matches_the_request_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema("rank-request.json"))
    validator.validate(json.loads((SCENARIO_DIR / "seed_example_request1.json").read_text()))


@pytest.mark.parametrize(
    "request_",
    [
        {"destinations": [{"id": "a"}]},  # no job
        {"job": {"tool_id": "t"}, "job_info": {"tool_id": "t"}, "destinations": []},  # two names
        {"job": {"tool_id": "t"}},  # no destinations
        {"job": {"tool_id": "t", "cores": "4"}, "destinations": []},  # a string number
        {"job": {"tool_id": ""}, "destinations": []},
        {"job": {"tool_id": "t"}, "destinations": [{"id": "a", "latitude": 91}]},
        {"job": {"tool_id": "t"}, "destinations": [{"id": "a", "metrics": {"nope": 1}}]},
        {"job": {"tool_id": "t"}, "destinations": [{"id": "a", "metrics": {"observed_at": "noon"}}]},
        {"job": {"tool_id": "t"}, "destinations": [], "options": {"fast": True}},
        {"job": {"tool_id": "t"}, "destinations": [], "options": {"weights": {"halving_km": 0}}},
    ],
)
def test_request_schema_rejects_what_rank_rejects(request_: dict[str, Any]) -> None:
    assert not jsonschema.Draft202012Validator(schema("rank-request.json")).is_valid(request_)


def test_request_schema_accepts_unknown_top_level_and_tpv_keys() -> None:
    request_ = {
        "job": {"tool_id": "t"},
        "galaxy": "ignored with a warning",
        "destinations": [{"id": "a", "runner": "slurm", "context": {"latitude": 1, "longitude": 2, "x": 3}}],
    }
    jsonschema.Draft202012Validator(schema("rank-request.json")).validate(request_)


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.yml")), ids=lambda p: p.stem)
def test_scenarios_match_both_schemas(path: Path, tmp_path: Path) -> None:
    jsonschema.Draft202012Validator(schema("rank-request.json")).validate(load_scenario(path)["request"])
    answer = run_scenario(path, tmp_path)
    jsonschema.Draft202012Validator(schema("rank-response.json")).validate(answer)
    msgspec.convert(answer, RankResponseOut)  # the Structs the response schema is generated from
