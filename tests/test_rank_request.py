"""Rank request validation in-process: aliases, defaults, units and the exact field named by each error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from metasched.domain.errors import InputError
from metasched.rank.request import (
    MAX_DESTINATIONS,
    MAX_REQUEST_BYTES,
    decode_request,
    parse_request,
    parse_request_bytes,
)

SEED = Path(__file__).parent / "scenarios" / "rank" / "seed_shaped_locality_request.json"


def base(**extra: Any) -> dict[str, Any]:
    return {"job": {"tool_id": "bwa"}, "destinations": [{"id": "a"}, {"id": "b"}], **extra}


def job(**fields: Any) -> dict[str, Any]:
    return {"job": {"tool_id": "t", **fields}, "destinations": []}


def dest(**fields: Any) -> dict[str, Any]:
    return base(destinations=[{"id": "a", **fields}])


def test_seed_request_parses_unchanged() -> None:
    req = parse_request(json.loads(SEED.read_text()))
    assert req.job.tool_id == "trinity"
    assert req.job.cores == 4
    assert req.job.mem_mb == 8 * 1024  # GB in the request, MB inside: converted once, here
    assert [d.id for d in req.destinations] == [
        "pulsar_italy",
        "slurm_germany",
        "pulsar_australia",
        "condor_belgium",
    ]
    assert {d.id: d.size_bytes for d in req.datasets}["5"] == 1e9
    assert set(req.objectstores) == {
        "object_store_italy_S3_01",
        "object_store_belgium_S3_01",
        "object_store_germany_S3_01",
        "object_store_australia_S3_01",
    }
    assert req.warnings == ()


def test_defaults() -> None:
    req = parse_request(base())
    assert (req.job.cores, req.job.mem_mb, req.job.gpus) == (1.0, 0.0, 0.0)
    assert req.options.drop_infeasible is False
    assert req.datasets == ()


@pytest.mark.parametrize("key", ["job", "job_info", "static_job_info"])
def test_job_aliases(key: str) -> None:
    req = parse_request({key: {"tool_id": "t", "cores": 2, "mem": 1.5, "gpus": 1}, "destinations": []})
    assert (req.job.tool_id, req.job.cores, req.job.mem_mb, req.job.gpus) == ("t", 2, 1536, 1)


@pytest.mark.parametrize("key", ["destinations", "current_dest_info"])
def test_destination_aliases(key: str) -> None:
    req = parse_request({"job": {"tool_id": "t"}, key: [{"id": "x", "queued_job_count": 3}]})
    assert req.destinations[0].id == "x"
    assert req.destinations[0].metrics.queued == 3


@pytest.mark.parametrize("key", ["datasets", "dataset_attributes", "static_dataset_info"])
def test_dataset_aliases(key: str) -> None:
    req = parse_request(base(**{key: {"12": {"object_store_id": None, "size": 5}}}))
    assert [(d.id, d.object_store_id, d.size_bytes) for d in req.datasets] == [("12", None, 5)]


@pytest.mark.parametrize("key", ["objectstores", "static_objectstores_info"])
def test_objectstore_aliases(key: str) -> None:
    req = parse_request(base(**{key: {"s3": {"latitude": 1.5, "longitude": -2}}}))
    assert req.objectstores["s3"].latitude == 1.5


def test_location_from_context_and_tpv_fields() -> None:
    req = parse_request(
        {
            "job": {"tool_id": "t", "job_id": 17},
            "destinations": [
                {
                    "id": "x",
                    "runner": "slurm",
                    "params": {"a": 1},
                    "context": {"latitude": 10, "longitude": 20, "object_store_id": "s"},
                    "tpv_score": -1,
                    "max_accepted_mem": 2,
                }
            ],
        }
    )
    d = req.destinations[0]
    assert (d.location.latitude, d.location.longitude) == (10, 20)  # type: ignore[union-attr]
    assert d.object_store_id == "s"
    assert d.tpv_score == -1
    assert d.max_mem_mb == 2048


def test_unknown_top_level_keys_are_a_warning() -> None:
    req = parse_request(base(galaxy="x"))
    assert req.warnings and '"galaxy"' in req.warnings[0]


INVALID: list[tuple[str, object, str]] = [
    ("not an object", [1, 2], "request: must be an object"),
    ("job missing", {"destinations": []}, "job: missing"),
    ("tool missing", {"job": {}, "destinations": []}, "job.tool_id: missing"),
    ("destinations missing", {"job": {"tool_id": "t"}}, "destinations: missing"),
    ("destinations not list", {"job": {"tool_id": "t"}, "destinations": {}}, "destinations: must be a list"),
    ("missing id", base(destinations=[{"id": "a"}, {}]), "destinations[1].id: missing"),
    ("id not string", base(destinations=[{"id": 3}]), "destinations[0].id: must be a string"),
    ("empty id", base(destinations=[{"id": ""}]), "destinations[0].id: must not be empty"),
    (
        "duplicate",
        base(destinations=[{"id": "a"}, {"id": "b"}, {"id": "a"}]),
        "destinations[2].id: duplicate",
    ),
    ("negative cores", job(cores=-1), "job.cores: must be >= 0"),
    (
        "string number",
        job(cores="4"),
        "job.cores: must be a number",
    ),
    ("bool number", job(mem=True), "job.mem: must be a number"),
    (
        "big int",
        job(gpus=10**400),
        "job.gpus: number out of range",
    ),
    ("string tpv", dest(tpv_score="2"), "destinations[0].tpv_score: must be"),
    ("bad lat", dest(latitude=91, longitude=0), "destinations[0].latitude"),
    ("half location", dest(latitude=1), "destinations[0].longitude: missing"),
    (
        "bad context",
        base(destinations=[{"id": "a", "context": []}]),
        "destinations[0].context: must be an object",
    ),
    ("bad metric", dest(metrics={"nope": 1}), "destinations[0].metrics.nope"),
    ("dataset size", base(datasets={"1": {"size": "9"}}), 'datasets["1"].size: must be a number'),
    (
        "dataset store",
        base(dataset_attributes={"1": {"object_store_id": 4}}),
        'dataset_attributes["1"].object_',
    ),
    ("objectstore", base(objectstores={"s": []}), 'objectstores["s"]: must be an object'),
    ("unknown option", base(options={"fast": True}), "options.fast: unknown option"),
    ("drop flag", base(options={"drop_infeasible": "yes"}), "options.drop_infeasible: must be true or false"),
    (
        "two aliases",
        {"job": {"tool_id": "t"}, "job_info": {}, "destinations": []},
        "job_info: given together",
    ),
    ("job id", job(job_id=[1]), "job.job_id: must be"),
    (
        "too many",
        {"job": {"tool_id": "t"}, "destinations": [{"id": str(i)} for i in range(MAX_DESTINATIONS + 1)]},
        f"destinations: more than {MAX_DESTINATIONS}",
    ),
]


@pytest.mark.parametrize(("case", "value", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_name_the_field(case: str, value: object, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_request(value)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("case", "value", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_bytes_fast_path_words_problems_as_parse_request(case: str, value: object, message: str) -> None:
    """serve validates the bytes in one msgspec pass; what it refuses gets the same line as the CLI."""
    with pytest.raises(InputError) as err:
        parse_request_bytes(json.dumps(value).encode())
    assert str(err.value).startswith(message), str(err.value)


MORE_INVALID: list[tuple[str, object, str]] = [
    ("null id", base(destinations=[{"id": None}]), "destinations[0].id: missing"),
    ("long id", base(destinations=[{"id": "x" * 1025}]), "destinations[0].id: longer than 1024 characters"),
    (
        "infinite",
        b'{"job": {"tool_id": "t", "cores": 1e400}, "destinations": []}',
        "job.cores: must be finite",
    ),
    ("lat high", dest(latitude=91, longitude=0), "destinations[0].latitude: must be <= 90"),
    ("lon low", dest(latitude=0, longitude=-181), "destinations[0].longitude: must be >= -180"),
    ("ctx half", dest(context={"latitude": 1}), "destinations[0].context.longitude: missing (both"),
    ("metric", dest(metrics={"nope": 1}), "destinations[0].metrics.nope: unknown metric (known: carbon_"),
    ("weight", base(options={"weights": {"nope": 1}}), "options.weights.nope: unknown weight (known: band"),
    (
        "weight type",
        base(options={"weights": {"tpv_weight": "1"}}),
        "options.weights.tpv_weight: must be a n",
    ),
    ("weight >0", base(options={"weights": {"halving_km": 0}}), "options.weights.halving_km: must be > 0"),
    (
        "weight <=1",
        base(options={"weights": {"history_weight": 2}}),
        "options.weights.history_weight: must be",
    ),
    (
        "weight >=0",
        base(options={"weights": {"dispatch_s": -1}}),
        "options.weights.dispatch_s: must be a fin",
    ),
    ("seen type", dest(metrics={"observed_at": True}), "destinations[0].metrics.observed_at: must be an RFC"),
    (
        "seen text",
        dest(metrics={"observed_at": "noon"}),
        "destinations[0].metrics.observed_at: must be an RFC",
    ),
    (
        "seen date",
        dest(metrics={"observed_at": "2026-13-01T00:00:00Z"}),
        "destinations[0].metrics.observed_at: not",
    ),
    (
        "seen unzoned",
        dest(metrics={"observed_at": "2026-11-01T00:00:00"}),
        "destinations[0].metrics.observed_at",
    ),
    ("seen newline", dest(metrics={"observed_at": "2026-11-01T00:00:00Z\n"}), "destinations[0].metrics.obs"),
    ("dataset key", base(datasets={"a": {}, "b": {"size": -1}}), 'datasets["b"].size: must be >= 0'),
    ("os half", base(objectstores={"s": {"latitude": 1}}), 'objectstores["s"].longitude: missing'),
    ("null job", {"job": None, "job_info": {"tool_id": "t"}, "destinations": []}, "job_info: given together"),
    ("job order", {"destinations": [{}], "job": {}}, "job.tool_id: missing"),
    (
        "section order",
        base(destinations=[{"id": "a", "latitude": 1}, {"id": 2}]),
        "destinations[0].longitude",
    ),
]


@pytest.mark.parametrize(("case", "value", "message"), MORE_INVALID, ids=[c[0] for c in MORE_INVALID])
def test_more_problems_both_ways(case: str, value: object, message: str) -> None:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    for parse in (lambda: parse_request(decode_request(data)), lambda: parse_request_bytes(data)):
        with pytest.raises(InputError) as err:
            parse()
        assert str(err.value).startswith(message), str(err.value)
        assert "\n" not in str(err.value)


def test_bytes_fast_path_builds_the_same_request() -> None:
    seed = SEED.read_bytes()
    assert parse_request_bytes(seed) == parse_request(json.loads(seed))
    rich = base(
        job_info={"tool_id": "t", "job_id": 7, "tool_version": "1", "cores": 2, "mem": 3},
        galaxy="x",
        destinations=[
            {"id": "a", "metrics": {"free_mem_gb": 2, "observed_at": "2026-11-23T12:00:00.1234567Z"}},
            {"id": "b", "queued_job_count": 3, "context": {"object_store_id": "s", "foo": [1]}},
        ],
        datasets={"1": {"size": None}},
        options={"weights": {"tpv_weight": 0.5}, "drop_infeasible": True},
    )
    del rich["job"]
    data = json.dumps(rich).encode()
    assert parse_request_bytes(data) == parse_request(json.loads(data))
    assert parse_request_bytes(data).warnings  # the unknown key and the unsized dataset
    del rich["galaxy"]
    data = json.dumps(rich).encode()
    assert parse_request_bytes(data) == parse_request(json.loads(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{nope", "request: not JSON"),
        (b"", "request: empty"),
        (b"\xff\xfe{}", "request: not UTF-8"),
        (b'{"job": {"tool_id": "t", "cores": NaN}}', "request: NaN is not a valid JSON number"),
        (b'{"a": Infinity}', "request: Infinity is not a valid JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "request: nested too deeply"),
        (b" " * (MAX_REQUEST_BYTES + 1), f"request: larger than {MAX_REQUEST_BYTES} bytes"),
    ],
    ids=["not-json", "empty", "not-utf8", "nan", "infinity", "deep", "huge"],
)
def test_undecodable_requests(data: bytes, message: str) -> None:
    with pytest.raises(InputError) as err:
        decode_request(data)
    assert str(err.value).startswith(message)
    with pytest.raises(InputError) as err:
        parse_request_bytes(data)
    assert str(err.value).startswith(message)


def test_weights_are_validated() -> None:
    from metasched.settings.weights import DEFAULT_WEIGHTS, make_weights

    assert make_weights(("options.weights", {"tpv_weight": 0.5})).tpv_weight == 0.5
    assert set(DEFAULT_WEIGHTS) >= {"bandwidth_mb_s", "tpv_weight", "default_run_s"}
    for bad, msg in [
        ({"nope": 1}, "options.weights.nope: unknown weight"),
        ({"tpv_weight": "1"}, "options.weights.tpv_weight: must be a number"),
        ({"bandwidth_mb_s": 0}, "options.weights.bandwidth_mb_s: must be > 0"),
        ({"history_weight": 2}, "options.weights.history_weight: must be between 0 and 1"),
        ({"dispatch_s": -1}, "options.weights.dispatch_s: must be a finite number >= 0"),
    ]:
        with pytest.raises(InputError, match=msg.replace(".", r"\.")):
            make_weights(("options.weights", bad))
