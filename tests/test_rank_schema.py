"""The JSON Schemas in metasched/schemas describe what the code accepts and produces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from metasched.rank.request import METRIC_KEYS, OPTION_KEYS
from metasched.settings.weights import DEFAULT_WEIGHTS
from tests.test_rank_scenarios import SCENARIO_DIR, load_scenario, run_scenario

SCHEMAS = Path(__file__).parents[1] / "metasched" / "schemas"


def schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def test_schema_lists_match_the_code() -> None:
    defs = schema("rank-request.json")["$defs"]
    assert set(defs["options"]["properties"]) == OPTION_KEYS
    assert set(defs["options"]["properties"]["weights"]["properties"]) == set(DEFAULT_WEIGHTS)
    metrics = defs["destinations"]["items"]["properties"]["metrics"]["properties"]
    assert set(metrics) == METRIC_KEYS


def test_seed_request_matches_the_request_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema("rank-request.json"))
    validator.validate(json.loads((SCENARIO_DIR / "seed_example_request1.json").read_text()))


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.yml")), ids=lambda p: p.stem)
def test_scenarios_match_both_schemas(path: Path, tmp_path: Path) -> None:
    jsonschema.Draft202012Validator(schema("rank-request.json")).validate(load_scenario(path)["request"])
    jsonschema.Draft202012Validator(schema("rank-response.json")).validate(run_scenario(path, tmp_path))
