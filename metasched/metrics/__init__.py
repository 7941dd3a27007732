"""Metrics from InfluxDB: read for ``collect`` to cache in the store (so ``rank`` never waits on the
network), and the capacity summary written back. Knows nothing of the store (``metasched.app.metrics``
joins the two).

``fetch_metrics`` never raises for network or server trouble: it returns warnings and the rows of only
the measurements it could read, so the old cache stays when InfluxDB is down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from metasched.domain.destination import DestinationSummary, MetricRow
from metasched.metrics.influx1 import Influx1Client, InfluxError, InfluxServerError
from metasched.metrics.measurements import Point, destination_names, map_points, summary_line
from metasched.settings import Config, InfluxSettings
from metasched.settings.measurements import (
    MeasurementSpec,
    parse_duration,
    specs_from_overrides,
    summary_measurement,
)

__all__ = ["FetchResult", "InfluxError", "fetch_metrics", "make_client", "write_summary"]

log = logging.getLogger(__name__)


class MetricsClient(Protocol):
    def points(self, spec: MeasurementSpec, since: datetime) -> list[Point]: ...

    def write(self, lines: Sequence[str], precision: str = "s") -> None: ...

    def close(self) -> None: ...


@dataclass
class FetchResult:
    """Rows per store source (only measurements read successfully) and what went wrong."""

    rows: dict[str, list[MetricRow]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def make_client(settings: InfluxSettings) -> MetricsClient:
    """1.x over plain HTTP (stdlib), 2.x through influxdb-client (imported only here)."""
    if settings.version == 2:
        from metasched.metrics.influx2 import Influx2Client

        if not settings.bucket:
            raise InfluxError("influxdb.bucket is required for version 2")
        return Influx2Client(
            settings.url,
            token=settings.token,
            org=settings.org,
            bucket=settings.bucket,
            username=settings.username,
            password=settings.password,
            verify_ssl=settings.verify_ssl,
            timeout=settings.timeout,
        )
    return Influx1Client(
        settings.url,
        settings.database,
        username=settings.username,
        password=settings.password,
        verify_ssl=settings.verify_ssl,
        timeout=settings.timeout,
    )


def fetch_metrics(config: Config, now: datetime) -> FetchResult:
    """Query every enabled measurement once (all destinations in one statement each)."""
    result = FetchResult()
    settings = config.influxdb
    if settings is None:
        return result
    specs, problems = specs_from_overrides(settings.measurements)
    result.warnings.extend(problems)
    try:
        default_window = parse_duration(settings.window)
    except ValueError as e:
        result.warnings.append(f"influxdb.window: {e}")
        return result
    try:
        client = make_client(settings)
    except (InfluxError, ImportError) as e:
        result.warnings.append(f"influxdb: {e}")
        return result
    names = destination_names(config.destinations)
    configured = [d.id for d in config.destinations if d.enabled]
    try:
        for spec in specs:
            if not spec.enabled:
                continue
            window = parse_duration(spec.window) if spec.window else default_window
            try:
                points = client.points(spec, now - timedelta(seconds=window))
                result.rows[spec.key] = map_points(spec, points, names, configured, now)
            except InfluxServerError as e:
                result.warnings.append(f"influxdb: {e}; metrics not refreshed, cached values kept")
                break
            except (InfluxError, ValueError) as e:
                result.warnings.append(f"influxdb: measurement {spec.name!r}: {e}")
    finally:
        client.close()
    return result


def write_summary(config: Config, summaries: Sequence[DestinationSummary], now: datetime) -> None:
    """Write each destination's capacity/queue summary as line protocol, when ``write_summary`` is on.

    Raises ``InfluxError`` when the write fails (callers treat it as a warning). Destinations whose id
    cannot be a line-protocol tag value (newline, trailing backslash) are skipped with a log warning.
    """
    settings = config.influxdb
    if settings is None or not settings.write_summary:
        return
    measurement = summary_measurement(settings.measurements)
    ts = int(now.timestamp())
    lines: list[str] = []
    for s in summaries:
        try:
            lines.append(summary_line(measurement, s, ts))
        except ValueError as e:
            log.warning("influxdb: summary of destination %r not written: %s", s.id, e)
    if not lines:
        return
    client = make_client(settings)
    try:
        client.write(lines, precision="s")
    finally:
        client.close()
