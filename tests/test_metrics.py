"""Pure parts of the metrics package: durations, overrides, id mapping, result mapping, line protocol.

Points here are built by hand in the shapes the real servers return (see test_metrics_influx1 for the
same shapes read back from a real InfluxDB 1.6.7).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from metasched.domain.destination import DestinationSummary
from metasched.metrics.influx1 import InfluxQueryError, build_query, result_points
from metasched.metrics.measurements import Point, destination_names, escape_key, map_points, summary_line
from metasched.settings import DestinationConfig, SSHSettings
from metasched.settings.measurements import (
    DEFAULT_SPECS,
    parse_duration,
    specs_from_overrides,
    summary_measurement,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T = int(NOW.timestamp())
SPECS = {s.key: s for s in DEFAULT_SPECS}


def dest(dest_id: str, **kw: Any) -> DestinationConfig:
    return DestinationConfig(id=dest_id, scheduler="htcondor", host="local", ssh=SSHSettings(), **kw)


def mapped(key: str, points: list[Point], names: dict[str, str] | None = None) -> dict[Any, Any]:
    rows = map_points(SPECS[key], points, names or {}, [], NOW)
    return {(r.destination_id, r.tool_id, r.name): r.text if r.text is not None else r.value for r in rows}


@pytest.mark.parametrize(
    "text,seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("2d", 172800), ("1w", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0m", "15", "m", "1.5h", "15m; DROP", "-5m", " 15m", "15M", "now()"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_overrides_problems_name_the_key() -> None:
    specs, problems = specs_from_overrides(
        {
            "queue_by_destination": {"window": "soon"},
            "htcondor_cluster_usage": {"columns": {"nope": "x"}},
            "destination-queue-run-time": {"colour": "red"},
            "pulsar_carbon_intensity": {"enabled": "yes"},
            "made_up": {"name": "x"},
            "metasched_destination": {"name": "ms_summary"},
        }
    )
    assert len(problems) == 5
    assert problems[0].startswith("influxdb.measurements.queue_by_destination: invalid duration")
    assert "colour" in problems[1]
    assert "columns.nope: unknown" in problems[2]
    assert "enabled" in problems[3]
    assert problems[4].startswith("influxdb.measurements.made_up: unknown measurement")
    assert [s.key for s in specs] == [s.key for s in DEFAULT_SPECS]
    assert specs == list(DEFAULT_SPECS)  # bad overrides leave the defaults in use
    assert summary_measurement({"metasched_destination": {"name": "ms_summary"}}) == "ms_summary"


def test_override_merges_partially() -> None:
    specs, problems = specs_from_overrides(
        {"queue_by_destination": {"columns": {"count": "n"}, "enabled": False, "window": "5m"}}
    )
    assert problems == []
    q = specs[0]
    assert (q.enabled, q.window, q.col("count"), q.col("state")) == (False, "5m", "n", "state")


def test_names_prefer_tpv_ids() -> None:
    names = destination_names([dest("a", runner="b", vhost="vh"), dest("b"), dest("c", vhost="vh")])
    assert names == {"a": "a", "b": "b", "vh": "a", "c": "c"}


def test_queue_without_any_point_claims_nothing() -> None:
    assert map_points(SPECS["queue_by_destination"], [], {}, ["a", "b"], NOW) == []


def test_queue_never_swaps_states() -> None:
    pts = [
        Point(T - 60, {"destination_id": "a", "state": "queued"}, {"count": 5.0}),
        Point(T - 60, {"destination_id": "a", "state": "running"}, {"count": 2.0}),
        Point(T - 60, {"destination_id": "a", "state": "new"}, {"count": 9.0}),
    ]
    assert mapped("queue_by_destination", pts) == {("a", "", "queued"): 5.0, ("a", "", "running"): 2.0}


def test_queue_all_drained_reads_zero_once_the_source_falls_silent() -> None:
    """gxadmin writes nothing when every count is 0: after two silent minutes the old batch is history."""
    pts = [
        Point(T - 600, {"destination_id": "a", "state": "queued"}, {"count": 7.0}),
        Point(T - 600, {"destination_id": "a", "state": "running"}, {"count": 3.0}),
    ]
    rows = map_points(SPECS["queue_by_destination"], pts, {}, [], NOW)
    values = {(r.destination_id, r.name): r.value for r in rows}
    assert values == {("a", "queued"): 0.0, ("a", "running"): 0.0}
    assert {r.observed_at for r in rows} == {NOW}
    # Within two emit intervals the newest batch still stands.
    recent = [Point(T - 90, p.tags, p.fields) for p in pts]
    assert mapped("queue_by_destination", recent) == {("a", "", "queued"): 7.0, ("a", "", "running"): 3.0}
    specs, problems = specs_from_overrides({"queue_by_destination": {"emit_interval": "5m"}})
    assert problems == [] and specs[0].emit_interval == "5m"


def test_htcondor_newer_generation_wins_per_destination() -> None:
    legacy = Point(
        T - 300,
        {"classad": "'machine'", "destination_id": "", "unclaimed_tag": ""},
        {
            "destination_id": "vh",
            "unclaimed_cpus": 50.0,
            "total_detected_cpus": 64.0,
            "destination_status": "online",
        },
    )
    current = Point(
        T - 30,
        {"classad": "", "destination_id": '"vh"', "unclaimed_tag": "2c_4000m"},
        {"count": 4.0, "unclaimed_cpus": 2.0, "unclaimed_memory": 4000.0, "destination_status": "online"},
    )
    got = mapped("htcondor_cluster_usage", [legacy, current], {"vh": "pulsar_x"})
    assert got == {
        ("pulsar_x", "", "free_cores"): 8.0,
        ("pulsar_x", "", "free_mem_mb"): 16000.0,
        ("pulsar_x", "", "status"): "online",
    }
    older_current = Point(T - 900, current.tags, current.fields)
    got = mapped("htcondor_cluster_usage", [legacy, older_current], {"vh": "pulsar_x"})
    assert got[("pulsar_x", "", "free_cores")] == 50.0 and got[("pulsar_x", "", "total_cores")] == 64.0


def test_htcondor_quoted_name_is_unquoted_unless_the_quotes_are_the_id() -> None:
    pt = Point(
        T, {"destination_id": '"odd"', "unclaimed_tag": "1c_1m"}, {"count": 1.0, "unclaimed_cpus": 1.0}
    )
    assert ("odd", "", "free_cores") in mapped("htcondor_cluster_usage", [pt])
    assert ('"odd"', "", "free_cores") in mapped("htcondor_cluster_usage", [pt], {'"odd"': '"odd"'})


def test_result_points_reads_influx_json() -> None:
    body = {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "queue_by_destination",
                        "tags": {"destination_id": "a", "state": "queued"},
                        "columns": ["time", "count"],
                        "values": [[T, 3]],
                    }
                ],
            }
        ]
    }
    assert result_points(body) == [Point(T, {"destination_id": "a", "state": "queued"}, {"count": 3})]
    assert result_points({"results": [{"statement_id": 0}]}) == []
    with pytest.raises(InfluxQueryError, match="database not found"):
        result_points({"results": [{"statement_id": 0, "error": "database not found: x"}]})


def test_queries_bind_the_time_and_quote_identifiers() -> None:
    q = build_query(SPECS["queue_by_destination"])
    assert q == (
        'SELECT last("count") AS "count" FROM "queue_by_destination" WHERE time > $since '
        'GROUP BY "destination_id", "state"'
    )
    assert "$since" in build_query(SPECS["destination-queue-run-time"])
    assert build_query(SPECS["htcondor_cluster_usage"]).endswith("GROUP BY *")


def summary(dest_id: str) -> DestinationSummary:
    return DestinationSummary(
        id=dest_id,
        scheduler="slurm",
        host="h",
        reachable=False,
        last_attempt=None,
        last_success=None,
        error=None,
        cores_total=64,
        cores_free=10,
        mem_total_mb=256000,
        mem_free_mb=1000,
        gpus_total=2,
        gpus_free=1,
        nodes_total=4,
        nodes_unavailable=1,
        jobs_running=7,
        jobs_queued=3,
        jobs_held=0,
        queued_cores=6,
        running_cores=54,
    )


def test_summary_line_exact() -> None:
    assert summary_line("metasched_destination", summary("a b,c=d"), T) == (
        "metasched_destination,destination_id=a\\ b\\,c\\=d "
        "cores_total=64i,cores_free=10i,mem_total_mb=256000i,mem_free_mb=1000i,gpus_total=2i,gpus_free=1i,"
        "nodes_total=4i,nodes_unavailable=1i,jobs_running=7i,jobs_queued=3i,jobs_held=0i,queued_cores=6i,"
        f"running_cores=54i,reachable=false {T}"
    )


@pytest.mark.parametrize("bad", ["", "a\nb", "a\rb", "ends\\"])
def test_unwritable_tag_values(bad: str) -> None:
    with pytest.raises(ValueError):
        escape_key(bad)


def test_summary_measurement_override_is_checked() -> None:
    assert specs_from_overrides({"metasched_destination": {"name": "bad\nname"}})[1] == [
        "influxdb.measurements.metasched_destination: 'bad\\nname' cannot be written as a measurement name"
    ]
    assert specs_from_overrides({"metasched_destination": {"nom": "x"}})[1][0].endswith("(allowed: ['name'])")
    assert summary_measurement({"metasched_destination": {"name": "bad\nname"}}) == "metasched_destination"
    assert summary_measurement({}) == "metasched_destination"
