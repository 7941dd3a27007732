"""The InfluxDB measurements metasched reads, their defaults, and the check of a config's overrides.

Here rather than in ``metasched.metrics`` because ``config check`` validates ``influxdb.measurements``;
the metrics package turns query answers into rows with these specs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Kind = Literal["queue", "queue_run_time", "htcondor", "carbon"]
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class MeasurementSpec:
    """One measurement to pull. ``key`` is the default name and the store's ``source``; it never changes.

    ``columns`` maps roles (``destination``, ``count``...) to the tag/field names in the database, so
    sites with renamed fields only override names. ``batch_tolerance``: sources that emit only non-zero
    or present rows (gxadmin queue, HTCondor slot shapes) write a whole batch at once; series missing
    from the newest batch (older than newest - tolerance) are gone, not "still the last value".
    """

    key: str
    kind: Kind
    name: str
    enabled: bool = True
    window: str | None = None  # None: InfluxSettings.window
    columns: Mapping[str, str] = field(default_factory=dict)
    states: Mapping[str, str] = field(default_factory=dict)  # metric name -> state tag value (queue)
    batch_tolerance: str | None = None
    # How often the source writes a batch. No batch for two of these means every queue drained
    # (gxadmin writes nothing when all counts are zero), not "still the last non-zero batch".
    emit_interval: str | None = None

    def col(self, role: str) -> str:
        return self.columns[role]


DEFAULT_SPECS: tuple[MeasurementSpec, ...] = (
    MeasurementSpec(
        key="queue_by_destination",
        kind="queue",
        name="queue_by_destination",
        columns={"destination": "destination_id", "state": "state", "count": "count"},
        states={"queued": "queued", "running": "running"},
        batch_tolerance="30s",
        emit_interval="60s",  # telegraf runs gxadmin every minute
    ),
    MeasurementSpec(
        key="destination-queue-run-time",
        kind="queue_run_time",
        name="destination-queue-run-time",
        window="2d",  # gxadmin writes it daily
        columns={
            "destination": "destination_id",
            "tool": "tool_id",
            "count": "count",
            "median_queue": "median_queue",
            "median_run": "median_run",
        },
    ),
    MeasurementSpec(
        key="htcondor_cluster_usage",
        kind="htcondor",
        name="htcondor_cluster_usage",
        columns={
            "destination": "destination_id",
            "status": "destination_status",
            "slot_count": "count",
            "total_cpus": "total_detected_cpus",
            "free_cpus": "unclaimed_cpus",
            "total_memory": "total_memory",
            "free_memory": "unclaimed_memory",
            "total_gpus": "total_gpus",
            "free_gpus": "unclaimed_gpus",
        },
        batch_tolerance="30s",
    ),
    MeasurementSpec(
        key="pulsar_carbon_intensity",
        kind="carbon",
        name="pulsar_carbon_intensity",
        window="2h",
        columns={
            "destination": "destination_id",
            "carbon_intensity": "carbon_intensity",
            "price_day_ahead": "price_day_ahead",
        },
    ),
)

SUMMARY_MEASUREMENT = "metasched_destination"
_OVERRIDE_KEYS = {"name", "enabled", "window", "columns", "states", "batch_tolerance", "emit_interval"}


def parse_duration(text: str) -> int:
    """``15m`` -> 900. Strictly ``<digits><s|m|h|d|w>`` and > 0: a typo is an error, not another window."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r} (expected e.g. 90s, 15m, 2h, 2d, 1w)")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def specs_from_overrides(
    overrides: Mapping[str, Mapping[str, Any]],
) -> tuple[list[MeasurementSpec], list[str]]:
    """Defaults merged with ``InfluxSettings.measurements``; returns the specs and one problem per bad entry.

    A bad override disables nothing else: the default of that measurement stays in use.
    """
    problems: list[str] = []
    by_key = {s.key: s for s in DEFAULT_SPECS}
    specs: list[MeasurementSpec] = []
    for spec in DEFAULT_SPECS:
        ov = overrides.get(spec.key)
        if ov is None:
            specs.append(spec)
            continue
        try:
            specs.append(_apply_override(spec, ov))
        except ValueError as e:
            problems.append(f"influxdb.measurements.{spec.key}: {e}")
            specs.append(spec)
    for key in overrides:
        if key == SUMMARY_MEASUREMENT:
            try:
                _summary_name(overrides[key])
            except ValueError as e:
                problems.append(f"influxdb.measurements.{key}: {e}")
        elif key not in by_key:
            known = ", ".join([*by_key, SUMMARY_MEASUREMENT])
            problems.append(f"influxdb.measurements.{key}: unknown measurement (known: {known})")
    return specs, problems


def summary_measurement(overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """Where ``write_summary`` writes; the default when the override is invalid (config check says so)."""
    try:
        return _summary_name(overrides.get(SUMMARY_MEASUREMENT) or {})
    except ValueError:
        return SUMMARY_MEASUREMENT


def _summary_name(ov: Any) -> str:
    if not isinstance(ov, Mapping):
        raise ValueError("must be a mapping")
    if set(ov) - {"name"}:
        raise ValueError(f"unknown keys {sorted(set(ov) - {'name'})} (allowed: ['name'])")
    name = ov.get("name", SUMMARY_MEASUREMENT)
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    escape_measurement(name)
    return name


def _apply_override(spec: MeasurementSpec, ov: Mapping[str, Any]) -> MeasurementSpec:
    if not isinstance(ov, Mapping):
        raise ValueError("must be a mapping")
    unknown = set(ov) - _OVERRIDE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (allowed: {sorted(_OVERRIDE_KEYS)})")
    name = ov.get("name", spec.name)
    if not isinstance(name, str) or not name or "\n" in name:
        raise ValueError("name must be a non-empty single-line string")
    enabled = ov.get("enabled", spec.enabled)
    if not isinstance(enabled, bool):
        raise ValueError("enabled must be true or false")
    window = ov.get("window", spec.window)
    if window is not None:
        parse_duration(window)
    tolerance = ov.get("batch_tolerance", spec.batch_tolerance)
    if tolerance is not None:
        parse_duration(tolerance)
    emit_interval = ov.get("emit_interval", spec.emit_interval)
    if emit_interval is not None:
        parse_duration(emit_interval)
    columns = _merge_names(spec.columns, ov.get("columns"), "columns")
    states = _merge_names(spec.states, ov.get("states"), "states")
    return replace(
        spec,
        name=name,
        enabled=enabled,
        window=window,
        columns=columns,
        states=states,
        batch_tolerance=tolerance,
        emit_interval=emit_interval,
    )


def _merge_names(base: Mapping[str, str], ov: Any, what: str) -> dict[str, str]:
    merged = dict(base)
    if ov is None:
        return merged
    if not isinstance(ov, Mapping):
        raise ValueError(f"{what} must be a mapping")
    for k, v in ov.items():
        if k not in base:
            raise ValueError(f"{what}.{k}: unknown (known: {', '.join(base)})")
        if not isinstance(v, str) or not v or "\n" in v:
            raise ValueError(f"{what}.{k}: must be a non-empty single-line string")
        merged[k] = v
    return merged


def escape_measurement(text: str) -> str:
    if not text or "\n" in text or "\r" in text or text.endswith("\\"):
        raise ValueError(f"{text!r} cannot be written as a measurement name")
    return text.replace(",", "\\,").replace(" ", "\\ ")
