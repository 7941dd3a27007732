"""InfluxDB 2.x through ``influxdb-client`` (Flux), imported only when a 2.x server is configured.

Every value (bucket, measurement, field names, time bound) is a bind parameter: influxdb-client sends
``params=`` as an ``extern`` of ``option _name = value`` statements (works on OSS 2.x, unlike the
Cloud-only ``params.x`` record), so the query refers to them as ``_bucket``, ``_since``... The query
text is constant per measurement kind. Answers are turned into the same ``Point``s as 1.x
so one set of mapping functions serves both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from metasched.metrics.influx1 import InfluxQueryError, InfluxServerError
from metasched.metrics.measurements import FieldValue, Point
from metasched.settings.measurements import MeasurementSpec

# Group-key columns of a Flux table that are not tags.
_NOT_TAGS = {"_start", "_stop", "_measurement", "_field", "result", "table"}
_NOT_FIELDS = {"_start", "_stop", "_measurement", "_time", "result", "table"}


def build_flux(spec: MeasurementSpec, bucket: str, since: datetime) -> tuple[str, dict[str, Any]]:
    """Flux text and its ``params``. Pivot first so each record is one point with its fields as columns;
    queue and run-time then keep each series' newest point (HTCondor legacy keeps every destination of
    its single series, so it takes the whole window)."""
    params: dict[str, Any] = {"_bucket": bucket, "_since": since, "_measurement_name": spec.name}
    lines = [
        "from(bucket: _bucket)",
        "  |> range(start: _since)",
        "  |> filter(fn: (r) => r._measurement == _measurement_name)",
    ]
    if spec.kind in ("queue", "queue_run_time"):
        roles = ("count",) if spec.kind == "queue" else ("count", "median_queue", "median_run")
        params["_fields"] = [spec.col(r) for r in roles]
        lines.append("  |> filter(fn: (r) => contains(value: r._field, set: _fields))")
    lines.append('  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    if spec.kind in ("queue", "queue_run_time"):
        lines.append('  |> last(column: "_time")')
    return "\n".join(lines), params


def tables_to_points(tables: Iterable[Any]) -> list[Point]:
    """FluxTables (as influxdb-client parses them) -> Points: group-key columns are tags, the rest fields.

    Records of one series and time are merged, in case a query left fields in separate tables.
    """
    merged: dict[tuple[tuple[tuple[str, str], ...], int], dict[str, FieldValue]] = {}
    for table in tables:
        group = {c.label for c in table.columns if c.group}
        for record in table.records:
            values = record.values
            tags = tuple(
                sorted(
                    (k, str(v))
                    for k, v in values.items()
                    if k in group and k not in _NOT_TAGS and v is not None
                )
            )
            when = values.get("_time")
            if not isinstance(when, datetime):
                continue
            fields = merged.setdefault((tags, int(when.timestamp())), {})
            if "_field" in values and "_value" in values:
                fields[str(values["_field"])] = _field_value(values["_value"])
            for k, v in values.items():
                if k not in group and k not in _NOT_FIELDS and k not in ("_field", "_value"):
                    fields[k] = _field_value(v)
    return [Point(time=t, tags=dict(tags), fields=f) for (tags, t), f in merged.items()]


def _field_value(v: Any) -> FieldValue:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


class Influx2Client:
    """Thin wrapper that turns influxdb-client's exceptions into metasched's Influx errors."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        org: str | None,
        bucket: str,
        username: str | None = None,
        password: str | None = None,
        verify_ssl: bool = True,
        timeout: float = 10.0,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient

        auth = token if token else f"{username or ''}:{password or ''}"
        self.url = url
        self.org = org
        self.bucket = bucket
        self._client = InfluxDBClient(
            url=url, token=auth, org=cast(str, org), timeout=int(timeout * 1000), verify_ssl=verify_ssl
        )

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from influxdb_client.rest import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            status = int(getattr(e, "status", 0) or 0)
            if status in (401, 403) or status >= 500:
                raise InfluxServerError(f"{self.url}: HTTP {status}: {e.reason}") from e
            raise InfluxQueryError(f"HTTP {status}: {e.reason}") from e
        except Exception as e:  # urllib3 connection/TLS/timeout errors have no common base worth naming
            raise InfluxServerError(f"{self.url}: unreachable: {e}") from e

    def points(self, spec: MeasurementSpec, since: datetime) -> list[Point]:
        flux, params = build_flux(spec, self.bucket, since)
        tables = self._call(self._client.query_api().query, flux, org=self.org, params=params)
        return tables_to_points(tables)

    def write(self, lines: Sequence[str], precision: str = "s") -> None:
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision

        api = self._client.write_api(write_options=SYNCHRONOUS)
        prec = WritePrecision.S if precision == "s" else WritePrecision.NS
        self._call(api.write, bucket=self.bucket, org=self.org, record=list(lines), write_precision=prec)
