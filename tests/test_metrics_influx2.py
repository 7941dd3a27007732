"""InfluxDB 2.x support: Flux query construction and the mapping of Flux answers to metric rows.

No InfluxDB 2.x server can be installed here (Debian ships 1.6.7, which lacks ``/api/v2``), so these
are NOT integration tests. The answers are annotated CSV shaped exactly like a 2.x server's reply to
the queries ``build_flux`` makes (tests/fixtures/influx/flux_*.csv), parsed into FluxTable/FluxRecord
objects by influxdb-client's own ``FluxCsvParser`` — the same path ``query_api().query`` takes.
The one real network behaviour checked is a 2.x URL nobody listens on.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from influxdb_client.client._base import _BaseQueryApi
from influxdb_client.client.flux_csv_parser import FluxCsvParser, FluxSerializationMode

from metasched.app.metrics import write_summary
from metasched.domain.destination import MetricRow
from metasched.domain.jobs import Node, Snapshot
from metasched.metrics import InfluxError, fetch_metrics
from metasched.metrics.influx2 import build_flux, tables_to_points
from metasched.metrics.measurements import destination_names, map_points
from metasched.settings import Config, DestinationConfig, InfluxSettings, SSHSettings
from metasched.settings.measurements import DEFAULT_SPECS, specs_from_overrides
from metasched.store import Store
from tests.infra.procs import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "influx"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BWAMETH = "toolshed.g2.bx.psu.edu/repos/iuc/bwameth/bwameth/0.2.7+galaxy0"
SPECS = {s.key: s for s in DEFAULT_SPECS}


def dest(dest_id: str, **kw: Any) -> DestinationConfig:
    return DestinationConfig(id=dest_id, scheduler="htcondor", host="local", ssh=SSHSettings(), **kw)


DESTS = (
    dest("pulsar_de02"),
    dest("slurm_main", runner="slurm"),
    dest("pulsar_fr", vhost="pulsar_fr01"),
    dest("pulsar_be", vhost="pulsar_be01"),
    dest("pulsar_it", vhost="pulsar_it01"),
)


def tables(name: str) -> Any:
    parser = FluxCsvParser(
        response=io.BytesIO((FIXTURES / name).read_bytes()), serialization_mode=FluxSerializationMode.tables
    )
    list(parser.generator())
    return parser.tables


def rows(key: str, csv: str) -> dict[tuple[str, str, str], float | str | None]:
    mapped = map_points(
        SPECS[key], tables_to_points(tables(csv)), destination_names(DESTS), [d.id for d in DESTS], NOW
    )
    return {(r.destination_id, r.tool_id, r.name): r.text if r.text is not None else r.value for r in mapped}


def test_flux_text_is_constant_and_values_are_params() -> None:
    spec = specs_from_overrides(
        {"queue_by_destination": {"name": 'x") |> drop() //', "columns": {"count": "n"}}}
    )[0]
    queue = next(s for s in spec if s.key == "queue_by_destination")
    flux, params = build_flux(queue, 'bucket"; drop', NOW - timedelta(minutes=15))
    default_flux, _ = build_flux(SPECS["queue_by_destination"], "b", NOW)
    assert flux == default_flux  # nothing from the config or the request is in the text
    assert params == {
        "_bucket": 'bucket"; drop',
        "_since": NOW - timedelta(minutes=15),
        "_measurement_name": 'x") |> drop() //',
        "_fields": ["n"],
    }
    assert "from(bucket: _bucket)" in flux and "range(start: _since)" in flux
    assert "r._measurement == _measurement_name" in flux
    assert "contains(value: r._field, set: _fields)" in flux
    assert flux.index("pivot(") < flux.index('last(column: "_time")')


def test_flux_params_become_the_option_statements_the_query_uses() -> None:
    """influxdb-client turns ``params`` into ``option <name> = <literal>`` in the request's extern."""
    flux, params = build_flux(SPECS["destination-queue-run-time"], "galaxy", NOW)
    extern = _BaseQueryApi._build_flux_ast(params)
    kinds = {s.assignment.id.name: s.assignment.init.type for s in extern.body}
    assert kinds == {
        "_bucket": "StringLiteral",
        "_since": "DateTimeLiteral",
        "_measurement_name": "StringLiteral",
        "_fields": "ArrayExpression",
    }
    assert all(name in flux for name in kinds)


def test_htcondor_query_keeps_the_whole_window() -> None:
    """Legacy points of every destination share one series: last() per series would drop all but one."""
    flux, params = build_flux(SPECS["htcondor_cluster_usage"], "b", NOW)
    assert "last(" not in flux and "_fields" not in params


def test_queue_from_flux() -> None:
    v = rows("queue_by_destination", "flux_queue.csv")
    assert (v[("pulsar_de02", "", "queued")], v[("pulsar_de02", "", "running")]) == (7, 3)
    assert (v[("slurm_main", "", "queued")], v[("slurm_main", "", "running")]) == (0, 12)
    assert v[("pulsar_it", "", "queued")] == 0


def test_run_time_from_flux() -> None:
    v = rows("destination-queue-run-time", "flux_run_time.csv")
    assert v == {
        ("pulsar_de02", BWAMETH, "count"): 12,
        ("pulsar_de02", BWAMETH, "median_queue_s"): 61,
        ("pulsar_de02", BWAMETH, "median_run_s"): 1500,
        ("slurm_main", "upload1", "count"): 300,
        ("slurm_main", "upload1", "median_queue_s"): 3,
        ("slurm_main", "upload1", "median_run_s"): 35,
    }


def test_htcondor_both_generations_from_flux() -> None:
    v = rows("htcondor_cluster_usage", "flux_htcondor.csv")
    assert v[("pulsar_fr", "", "total_cores")] == 96
    assert v[("pulsar_fr", "", "free_mem_mb")] == 130000
    assert v[("pulsar_be", "", "status")] == "offline"
    assert v[("pulsar_it", "", "free_cores")] == 34
    assert v[("pulsar_it", "", "free_mem_mb")] == 86000


def test_split_field_tables_are_merged_per_point() -> None:
    """Without pivot a 2.x answer has one table per field; records of one point still make one Point."""
    unpivoted = [
        "#group,false,false,true,true,false,false,true,true,true,true,true",
        "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string,string,string,string",
        "#default,_result,,,,,,,,,,",
        ",result,table,_start,_stop,_time,_value,_field,_measurement,destination_id,host,tool_id",
    ]
    for i, (f, value) in enumerate((("count", 12), ("median_queue", 61), ("median_run", 1500))):
        unpivoted.append(
            f",,{i},2025-12-30T00:00:00Z,2026-01-01T00:00:00Z,2025-12-31T17:33:20Z,{value},{f},"
            f"destination-queue-run-time,pulsar_de02,galaxy01,{BWAMETH}"
        )
    parser = FluxCsvParser(
        response=io.BytesIO(("\n".join(unpivoted) + "\n\n").encode()),
        serialization_mode=FluxSerializationMode.tables,
    )
    list(parser.generator())
    [point] = tables_to_points(parser.tables)
    assert point.fields == {"count": 12.0, "median_queue": 61.0, "median_run": 1500.0}
    assert dict(point.tags) == {"destination_id": "pulsar_de02", "host": "galaxy01", "tool_id": BWAMETH}


def test_version2_unreachable_is_a_warning() -> None:
    settings = InfluxSettings(
        url=f"http://127.0.0.1:{free_port()}", version=2, token="t", org="o", bucket="b", timeout=2.0
    )
    got = fetch_metrics(
        Config(path=None, database=None, ssh=SSHSettings(), destinations=DESTS, influxdb=settings), NOW
    )
    assert got.rows == {}
    assert len(got.warnings) == 1 and "unreachable" in got.warnings[0]


def test_version2_needs_a_bucket() -> None:
    settings = InfluxSettings(url="http://127.0.0.1:1", version=2, token="t", org="o")
    got = fetch_metrics(
        Config(path=None, database=None, ssh=SSHSettings(), destinations=DESTS, influxdb=settings), NOW
    )
    assert got.warnings == ["influxdb: influxdb.bucket is required for version 2"]


def test_rows_are_metric_rows() -> None:
    mapped = map_points(
        SPECS["queue_by_destination"],
        tables_to_points(tables("flux_queue.csv")),
        destination_names(DESTS),
        [],
        NOW,
    )
    assert all(
        isinstance(r, MetricRow) and r.source == "queue_by_destination" and r.fetched_at == NOW
        for r in mapped
    )


@pytest.mark.parametrize("csv", ["flux_queue.csv", "flux_run_time.csv", "flux_htcondor.csv"])
def test_points_carry_epoch_seconds(csv: str) -> None:
    assert all(
        isinstance(p.time, int) and p.time <= int(NOW.timestamp()) for p in tables_to_points(tables(csv))
    )


def test_version2_write_summary_unreachable_raises_influx_error(tmp_path: Path) -> None:
    settings = InfluxSettings(
        url=f"http://127.0.0.1:{free_port()}", version=2, token="t", org="o", bucket="b", write_summary=True
    )
    cfg = Config(path=None, database=None, ssh=SSHSettings(), destinations=DESTS, influxdb=settings)
    with Store.open(str(tmp_path / "s.db")) as store:
        store.sync_destinations([("slurm_main", "slurm", "local")])
        node = Node("n1", "idle", True, cores_total=4)
        store.write_snapshot("slurm_main", Snapshot(nodes=[node]), run_id="r", started=NOW, finished=NOW)
        with pytest.raises(InfluxError, match="unreachable"):
            write_summary(cfg, store, NOW)
