"""What metasched reads from InfluxDB and how query results become ``MetricRow``s.

Pure functions only: the 1.x and 2.x clients turn their answers into ``Point``s, and everything
that knows the field's measurement shapes (gxadmin, ansible-pulsar-util) lives here, testable
without a server. Units are converted once here (HTCondor memory stays MB, named ``*_mb``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from metasched.domain.destination import DestinationSummary, MetricRow
from metasched.settings.measurements import MeasurementSpec, escape_measurement, parse_duration
from metasched.settings.models import DestinationConfig

FieldValue = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class Point:
    """One row of a query answer: a series' tags, the point's time (epoch seconds) and its fields."""

    time: int
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]


def destination_names(destinations: Iterable[DestinationConfig]) -> dict[str, str]:
    """Every name a destination has in metric sources -> its TPV id. TPV ids win over runner/vhost names."""
    names: dict[str, str] = {}
    dests = list(destinations)
    for d in dests:
        for alias in (d.vhost, d.runner):
            if alias:
                names.setdefault(alias, d.id)
    for d in dests:
        names[d.id] = d.id
    return names


def _unquote(name: str) -> str:
    """ansible-pulsar-util writes ``destination_id="vhost"``: the quotes are part of the stored value."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1]
    return name


def _resolve(name: str, names: Mapping[str, str], quoted: bool) -> str:
    if name in names:
        return names[name]
    if quoted:
        bare = _unquote(name)
        return names.get(bare, bare)
    return name


def _num(value: FieldValue) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        return None


def _text(value: FieldValue) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _ts(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _latest_per(points: Iterable[Point], key: Any) -> dict[Any, Point]:
    latest: dict[Any, Point] = {}
    for p in points:
        k = key(p)
        if k is None:
            continue
        cur = latest.get(k)
        if cur is None or p.time > cur.time:
            latest[k] = p
    return latest


def map_points(
    spec: MeasurementSpec,
    points: Sequence[Point],
    names: Mapping[str, str],
    configured: Sequence[str],
    fetched_at: datetime,
) -> list[MetricRow]:
    """Rows for the store, at most one per (destination, tool, name), ids mapped back to TPV ids."""
    if spec.kind == "queue":
        rows = _map_queue(spec, points, names, configured, int(fetched_at.timestamp()))
    elif spec.kind == "queue_run_time":
        rows = _map_run_time(spec, points, names)
    elif spec.kind == "htcondor":
        rows = _map_htcondor(spec, points, names)
    else:
        rows = _map_carbon(spec, points, names)
    return [replace(r, source=spec.key, fetched_at=fetched_at) for r in rows]


def _map_queue(
    spec: MeasurementSpec,
    points: Sequence[Point],
    names: Mapping[str, str],
    configured: Sequence[str],
    now: int,
) -> list[MetricRow]:
    """gxadmin emits only non-zero (destination, state) pairs: absent from the newest batch means 0.

    With no point at all in the window nothing is claimed (the source may simply not run here). When
    the newest batch is older than two emit intervals, the source has been writing nothing because
    every count is zero: all queues read 0 as of ``now``.
    """
    dest_tag, state_tag, count_field = spec.col("destination"), spec.col("state"), spec.col("count")
    metric_of_state = {v: k for k, v in spec.states.items()}
    relevant = [p for p in points if p.tags.get(state_tag) in metric_of_state and p.tags.get(dest_tag)]
    if not relevant:
        return []
    newest = max(p.time for p in relevant)
    if spec.emit_interval and now - newest > 2 * parse_duration(spec.emit_interval):
        newest = now  # silent source: the newest batch is the empty one it did not write
    oldest_ok = newest - parse_duration(spec.batch_tolerance) if spec.batch_tolerance else 0
    latest = _latest_per(relevant, lambda p: (_resolve(p.tags[dest_tag], names, False), p.tags[state_tag]))
    values: dict[tuple[str, str], tuple[float, int]] = {}
    for (dest, state), p in latest.items():
        count = _num(p.fields.get(count_field))
        if p.time >= oldest_ok and count is not None:
            values[(dest, metric_of_state[state])] = (count, p.time)
    dests = dict.fromkeys([*configured, *(d for d, _ in latest)])
    rows: list[MetricRow] = []
    for dest in dests:
        for metric in spec.states:
            count, t = values.get((dest, metric), (0.0, newest))  # absent from the newest batch: 0 then
            rows.append(MetricRow(spec.key, dest, metric, value=count, observed_at=_ts(t)))
    return rows


def _map_run_time(
    spec: MeasurementSpec, points: Sequence[Point], names: Mapping[str, str]
) -> list[MetricRow]:
    dest_tag, tool_tag = spec.col("destination"), spec.col("tool")
    latest = _latest_per(
        points,
        lambda p: (
            (_resolve(p.tags[dest_tag], names, False), p.tags[tool_tag])
            if p.tags.get(dest_tag) and p.tags.get(tool_tag)
            else None
        ),
    )
    rows: list[MetricRow] = []
    for (dest, tool), p in sorted(latest.items()):
        for metric, role in (
            ("count", "count"),
            ("median_queue_s", "median_queue"),
            ("median_run_s", "median_run"),
        ):
            value = _num(p.fields.get(spec.col(role)))
            if value is not None:
                rows.append(
                    MetricRow(spec.key, dest, metric, value=value, tool_id=tool, observed_at=_ts(p.time))
                )
    return rows


def _map_htcondor(
    spec: MeasurementSpec, points: Sequence[Point], names: Mapping[str, str]
) -> list[MetricRow]:
    """Two generations share the measurement; the shape tells them apart.

    Current: ``destination_id`` is a TAG (with literal quotes), one series per free slot shape
    (``count`` slots of ``unclaimed_cpus``/``unclaimed_memory`` each). Legacy: ``destination_id`` is a
    string FIELD of a ``classad='machine'`` point carrying cluster totals. Per destination the newer
    observation wins.
    """
    dest = spec.col("destination")
    current = [p for p in points if p.tags.get(dest)]
    legacy = [p for p in points if not p.tags.get(dest) and _text(p.fields.get(dest))]
    found: dict[str, tuple[int, list[MetricRow]]] = {}
    for did, (t, rows) in _htcondor_legacy(spec, legacy, names).items():
        found[did] = (t, rows)
    for did, (t, rows) in _htcondor_current(spec, current, names).items():
        if did not in found or t >= found[did][0]:
            found[did] = (t, rows)
    return [r for _, (_, rows) in sorted(found.items()) for r in rows]


def _htcondor_legacy(
    spec: MeasurementSpec, points: Sequence[Point], names: Mapping[str, str]
) -> dict[str, tuple[int, list[MetricRow]]]:
    dest = spec.col("destination")
    latest = _latest_per(points, lambda p: _resolve(str(p.fields[dest]), names, True))
    out: dict[str, tuple[int, list[MetricRow]]] = {}
    pairs = (
        ("total_cores", "total_cpus"),
        ("free_cores", "free_cpus"),
        ("total_mem_mb", "total_memory"),
        ("free_mem_mb", "free_memory"),
        ("total_gpus", "total_gpus"),
        ("free_gpus", "free_gpus"),
    )
    for did, p in latest.items():
        seen = _ts(p.time)
        rows = []
        for metric, role in pairs:
            value = _num(p.fields.get(spec.col(role)))
            if value is not None:
                rows.append(MetricRow(spec.key, did, metric, value=value, observed_at=seen))
        status = _text(p.fields.get(spec.col("status")))
        if status is not None:
            rows.append(MetricRow(spec.key, did, "status", text=status, observed_at=seen))
        out[did] = (p.time, rows)
    return out


def _htcondor_current(
    spec: MeasurementSpec, points: Sequence[Point], names: Mapping[str, str]
) -> dict[str, tuple[int, list[MetricRow]]]:
    dest = spec.col("destination")
    per_series = _latest_per(points, lambda p: tuple(sorted(p.tags.items())))
    by_dest: dict[str, list[Point]] = {}
    for p in per_series.values():
        by_dest.setdefault(_resolve(p.tags[dest], names, True), []).append(p)
    tolerance = parse_duration(spec.batch_tolerance) if spec.batch_tolerance else None
    out: dict[str, tuple[int, list[MetricRow]]] = {}
    count_f, cpus_f, mem_f, gpus_f = (
        spec.col(r) for r in ("slot_count", "free_cpus", "free_memory", "free_gpus")
    )
    for did, series in by_dest.items():
        newest = max(p.time for p in series)
        batch = [p for p in series if tolerance is None or p.time >= newest - tolerance]
        totals = {"free_cores": 0.0, "free_mem_mb": 0.0}
        gpus: float | None = None
        for p in batch:
            n = _num(p.fields.get(count_f))
            n = 1.0 if n is None else n
            totals["free_cores"] += n * (_num(p.fields.get(cpus_f)) or 0.0)
            totals["free_mem_mb"] += n * (_num(p.fields.get(mem_f)) or 0.0)
            g = _num(p.fields.get(gpus_f))
            if g is not None:
                gpus = (gpus or 0.0) + n * g
        if gpus is not None:
            totals["free_gpus"] = gpus
        seen = _ts(newest)
        rows = [MetricRow(spec.key, did, k, value=v, observed_at=seen) for k, v in totals.items()]
        newest_point = max(batch, key=lambda p: p.time)
        status = _text(newest_point.fields.get(spec.col("status")))
        if status is not None:
            rows.append(MetricRow(spec.key, did, "status", text=status, observed_at=seen))
        out[did] = (newest, rows)
    return out


def _map_carbon(spec: MeasurementSpec, points: Sequence[Point], names: Mapping[str, str]) -> list[MetricRow]:
    dest = spec.col("destination")

    def key(p: Point) -> str | None:
        raw = p.tags.get(dest) or _text(p.fields.get(dest))
        return _resolve(raw, names, True) if raw else None

    rows: list[MetricRow] = []
    for did, p in sorted(_latest_per(points, key).items()):
        for metric in ("carbon_intensity", "price_day_ahead"):
            value = _num(p.fields.get(spec.col(metric)))
            if value is not None:
                rows.append(MetricRow(spec.key, did, metric, value=value, observed_at=_ts(p.time)))
    return rows


# --- line protocol (write_summary) -------------------------------------------------------------


def escape_key(text: str) -> str:
    """Measurement names, tag keys and tag values: commas, equals signs and spaces get a backslash.

    InfluxDB 1.x does not unescape ``\\\\``, so a backslash elsewhere is written as is; a newline or a
    trailing backslash cannot be represented at all (``ValueError``).
    """
    if not text or "\n" in text or "\r" in text or text.endswith("\\"):
        raise ValueError(f"{text!r} cannot be written as a line-protocol key or tag value")
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def summary_line(measurement: str, s: DestinationSummary, ts: int) -> str:
    """One point per destination so Grafana can plot metasched's view next to the site's own metrics."""
    ints = {
        "cores_total": s.cores_total,
        "cores_free": s.cores_free,
        "mem_total_mb": s.mem_total_mb,
        "mem_free_mb": s.mem_free_mb,
        "gpus_total": s.gpus_total,
        "gpus_free": s.gpus_free,
        "nodes_total": s.nodes_total,
        "nodes_unavailable": s.nodes_unavailable,
        "jobs_running": s.jobs_running,
        "jobs_queued": s.jobs_queued,
        "jobs_held": s.jobs_held,
        "queued_cores": s.queued_cores,
        "running_cores": s.running_cores,
    }
    fields = ",".join(f"{k}={int(v)}i" for k, v in ints.items())
    reachable = "true" if s.reachable else "false"
    return (
        f"{escape_measurement(measurement)},destination_id={escape_key(s.id)} "
        f"{fields},reachable={reachable} {ts}"
    )
