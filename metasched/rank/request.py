"""Decode and validate a rank request by hand (no pydantic: rank must start almost as fast as bare Python).

Every problem raises InputError with one line naming the field path, e.g. ``destinations[3].id: missing``.
Keys and aliases follow docs/rank.md and metasched/schemas/rank-request.json.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from metasched.domain.errors import InputError
from metasched.rank.model import MB_PER_GB, Dataset, JobSpec, Location

MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_DESTINATIONS = 10_000
MAX_DATASETS = 100_000
MAX_ID_CHARS = 1024

ALIASES: Mapping[str, tuple[str, ...]] = {
    "job": ("job", "job_info", "static_job_info"),
    "destinations": ("destinations", "current_dest_info"),
    "datasets": ("datasets", "dataset_attributes", "static_dataset_info"),
    "objectstores": ("objectstores", "static_objectstores_info"),
    "options": ("options",),
}
OPTION_KEYS = frozenset({"weights", "drop_infeasible", "max_state_age", "max_metric_age"})
METRIC_KEYS = frozenset(
    {"queued", "running", "free_cores", "free_mem_gb", "free_gpus"}
    | {"total_cores", "total_mem_gb", "total_gpus"}
    | {"median_queue_s", "median_run_s", "status"}
    | {"carbon_intensity", "price_day_ahead"}
    | {"observed_at"}
)
# RFC 3339 date-time (the zone is required: an unzoned time would be read in the wrong zone silently).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True, slots=True)
class InlineMetrics:
    """Values the caller knows better than the store; each overrides the stored one. Memory in MB."""

    queued: float | None = None
    running: float | None = None
    free_cores: float | None = None
    free_mem_mb: float | None = None
    free_gpus: float | None = None
    total_cores: float | None = None  # in service: a request-only destination can be too small
    total_mem_mb: float | None = None
    total_gpus: float | None = None
    median_queue_s: float | None = None
    median_run_s: float | None = None
    status: str | None = None
    carbon_intensity: float | None = None  # gCO2/kWh; read only when an energy weight is on
    price_day_ahead: float | None = None  # EUR/MWh, may be negative
    observed_at: datetime | None = None  # aware UTC: when these values held (placements since then count)


NO_METRICS = InlineMetrics()  # immutable; shared by every destination without inline metrics


@dataclass(slots=True)
class DestinationRequest:
    """One candidate as the request gives it; built once per destination per request, never changed.

    Not ``frozen``: frozen dataclasses set every field through ``object.__setattr__``, a noticeable
    share of parsing a request on serve's hot path.
    """

    id: str
    index: int
    tpv_score: float = 0.0
    max_cores: float | None = None
    max_mem_mb: float | None = None
    max_gpus: float | None = None
    location: Location | None = None
    object_store_id: str | None = None
    metrics: InlineMetrics = NO_METRICS


@dataclass(frozen=True, slots=True)
class Options:
    weights: Mapping[str, object] = field(default_factory=dict)
    drop_infeasible: bool = False
    max_state_age: float | None = None
    max_metric_age: float | None = None


@dataclass(frozen=True, slots=True)
class RankRequest:
    job: JobSpec
    destinations: tuple[DestinationRequest, ...]
    datasets: tuple[Dataset, ...] = ()
    objectstores: Mapping[str, Location] = field(default_factory=dict)
    options: Options = field(default_factory=Options)
    job_id: str | int | None = None
    tool_version: str | None = None
    warnings: tuple[str, ...] = ()


def _reject_constant(name: str) -> float:
    raise InputError(f"request: {name} is not a valid JSON number")


def decode_request(data: bytes) -> object:
    """Bytes from stdin or a file -> the JSON value; caps the size, refuses NaN/Infinity."""
    if len(data) > MAX_REQUEST_BYTES:
        raise InputError(f"request: larger than {MAX_REQUEST_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"request: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise InputError("request: empty (expected a JSON object)")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"request: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise InputError("request: nested too deeply") from None


def _at(path: str, key: str | None) -> str:
    return path if key is None else f"{path}.{key}"


def _number(value: object, path: str, key: str | None = None, *, minimum: float | None = 0.0) -> float:
    """``value`` as a finite float; the error names ``path.key`` (built only on error: hot path)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{_at(path, key)}: must be a number, not {_kind(value)}")
    try:
        val = float(value)
    except OverflowError:
        raise InputError(f"{_at(path, key)}: number out of range") from None
    if not math.isfinite(val):
        raise InputError(f"{_at(path, key)}: must be finite")
    if minimum is not None and val < minimum:
        raise InputError(f"{_at(path, key)}: must be >= {minimum:g}")
    return val


def _opt_number(obj: Mapping[str, Any], key: str, path: str, *, minimum: float | None = 0.0) -> float | None:
    value = obj.get(key)
    return None if value is None else _number(value, path, key, minimum=minimum)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a number"


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{path}: must be an object, not {_kind(value)}")
    return value


def _ident(value: object, path: str) -> str:
    if value is None:
        raise InputError(f"{path}: missing")
    if not isinstance(value, str):
        raise InputError(f"{path}: must be a string, not {_kind(value)}")
    if not value:
        raise InputError(f"{path}: must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InputError(f"{path}: longer than {MAX_ID_CHARS} characters")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{path}.{key}: must be a string, not {_kind(value)}")
    return value


def _location(obj: Mapping[str, Any], path: str) -> Location | None:
    lat_raw = obj.get("latitude")
    lon_raw = obj.get("longitude")
    if lat_raw is None and lon_raw is None:
        return None
    lat = None if lat_raw is None else _number(lat_raw, path, "latitude", minimum=-90.0)
    lon = None if lon_raw is None else _number(lon_raw, path, "longitude", minimum=-180.0)
    if lat is None or lon is None:
        missing = "latitude" if lat is None else "longitude"
        raise InputError(f"{path}.{missing}: missing (both latitude and longitude are needed)")
    if lat > 90.0:
        raise InputError(f"{path}.latitude: must be <= 90")
    if lon > 180.0:
        raise InputError(f"{path}.longitude: must be <= 180")
    return Location(lat, lon)


def _pick(req: Mapping[str, Any], name: str) -> tuple[str, Any]:
    """The value under ``name`` or one of its aliases; two of them at once is ambiguous."""
    present = [key for key in ALIASES[name] if key in req]
    if len(present) > 1:
        raise InputError(f"{present[1]}: given together with {present[0]} (aliases of {name})")
    if not present:
        return name, None
    return present[0], req[present[0]]


def _job(value: object, path: str) -> tuple[JobSpec, str | int | None, str | None]:
    obj = _object(value, path)
    tool_id = _ident(obj.get("tool_id"), f"{path}.tool_id")
    cores = _opt_number(obj, "cores", path)
    mem_gb = _opt_number(obj, "mem", path)
    gpus = _opt_number(obj, "gpus", path)
    job_id = obj.get("job_id")
    if job_id is not None and (isinstance(job_id, bool) or not isinstance(job_id, str | int)):
        raise InputError(f"{path}.job_id: must be a string or an integer, not {_kind(job_id)}")
    version = _opt_str(obj, "tool_version", path)
    spec = JobSpec(
        tool_id=tool_id,
        cores=1.0 if cores is None else cores,
        mem_mb=0.0 if mem_gb is None else mem_gb * MB_PER_GB,
        gpus=0.0 if gpus is None else gpus,
    )
    return spec, job_id, version


def _metrics(value: object, path: str) -> InlineMetrics:
    obj = _object(value, path)
    for key in obj:
        if key not in METRIC_KEYS:
            raise InputError(f"{path}.{key}: unknown metric (known: {', '.join(sorted(METRIC_KEYS))})")
    free_mem_gb = _opt_number(obj, "free_mem_gb", path)
    seen = obj.get("observed_at")
    total_mem_gb = _opt_number(obj, "total_mem_gb", path)
    return InlineMetrics(
        queued=_opt_number(obj, "queued", path),
        running=_opt_number(obj, "running", path),
        free_cores=_opt_number(obj, "free_cores", path),
        free_mem_mb=None if free_mem_gb is None else free_mem_gb * MB_PER_GB,
        free_gpus=_opt_number(obj, "free_gpus", path),
        total_cores=_opt_number(obj, "total_cores", path),
        total_mem_mb=None if total_mem_gb is None else total_mem_gb * MB_PER_GB,
        total_gpus=_opt_number(obj, "total_gpus", path),
        median_queue_s=_opt_number(obj, "median_queue_s", path),
        median_run_s=_opt_number(obj, "median_run_s", path),
        status=_opt_str(obj, "status", path),
        carbon_intensity=_opt_number(obj, "carbon_intensity", path),
        price_day_ahead=_opt_number(obj, "price_day_ahead", path, minimum=None),
        observed_at=None if seen is None else _timestamp(seen, path, "observed_at"),
    )


def _timestamp(value: object, path: str, key: str) -> datetime:
    """An RFC 3339 string with a zone, or Unix seconds, as an aware UTC datetime."""
    if isinstance(value, str):
        if _RFC3339.fullmatch(value) is None:
            raise InputError(
                f"{path}.{key}: must be an RFC 3339 time with a zone (e.g. 2026-11-23T12:00:00Z) "
                f"or Unix seconds, got {value[:40]!r}"
            )
        text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
        frac = re.search(r"\.(\d+)", text)
        if frac is not None and len(frac.group(1)) > 6:  # datetime keeps microseconds
            text = text[: frac.start(1) + 6] + text[frac.end(1) :]
        try:
            return datetime.fromisoformat(text.replace("t", "T", 1)).astimezone(UTC)
        except (ValueError, OverflowError):
            raise InputError(f"{path}.{key}: not a valid date and time, got {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{path}.{key}: must be an RFC 3339 string or Unix seconds, not {_kind(value)}")
    seconds = _number(value, path, key)
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise InputError(f"{path}.{key}: Unix seconds out of range") from None


def _destination(value: object, index: int, path: str) -> DestinationRequest:
    obj = _object(value, path)
    get = obj.get  # absent keys are the common case: look each up once, validate only what is there
    dest_id = _ident(get("id"), f"{path}.id")
    context_raw = get("context")
    context = {} if context_raw is None else _object(context_raw, f"{path}.context")
    location = _location(obj, path)
    if location is None and context:
        location = _location(context, f"{path}.context")
    store = None if get("object_store_id") is None else _opt_str(obj, "object_store_id", path)
    if store is None and context:
        store = _opt_str(context, "object_store_id", f"{path}.context")
    raw = get("max_accepted_mem")
    max_mem_gb = None if raw is None else _number(raw, path, "max_accepted_mem")
    raw_metrics = get("metrics")
    metrics = NO_METRICS if raw_metrics is None else _metrics(raw_metrics, f"{path}.metrics")
    raw = get("queued_job_count")
    queued = None if raw is None else _number(raw, path, "queued_job_count")
    raw = get("running_job_count")
    running = None if raw is None else _number(raw, path, "running_job_count")
    if metrics.queued is None and queued is not None:
        metrics = replace(metrics, queued=queued)
    if metrics.running is None and running is not None:
        metrics = replace(metrics, running=running)
    raw = get("tpv_score")
    tpv_score = 0.0 if raw is None else _number(raw, path, "tpv_score", minimum=None) or 0.0
    raw = get("max_accepted_cores")
    max_cores = None if raw is None else _number(raw, path, "max_accepted_cores")
    raw = get("max_accepted_gpus")
    max_gpus = None if raw is None else _number(raw, path, "max_accepted_gpus")
    return DestinationRequest(
        dest_id,
        index,
        tpv_score,
        max_cores,
        None if max_mem_gb is None else max_mem_gb * MB_PER_GB,
        max_gpus,
        location,
        store,
        metrics,
    )


def _datasets(value: object, path: str) -> tuple[tuple[Dataset, ...], list[str]]:
    obj = _object(value, path)
    if len(obj) > MAX_DATASETS:
        raise InputError(f"{path}: more than {MAX_DATASETS} datasets")
    out: list[Dataset] = []
    unsized = 0
    for ds_id, raw in obj.items():
        where = f"{path}[{json.dumps(ds_id)}]"
        attrs = _object(raw, where)
        size = _opt_number(attrs, "size", where)
        if size is None:
            unsized += 1
        out.append(Dataset(ds_id, _opt_str(attrs, "object_store_id", where), size or 0.0))
    warnings = [f"{path}: {unsized} dataset(s) without a size counted as 0 bytes"] if unsized else []
    return tuple(out), warnings


def _objectstores(value: object, path: str) -> dict[str, Location]:
    obj = _object(value, path)
    out: dict[str, Location] = {}
    for os_id, raw in obj.items():
        loc = _location(_object(raw, f"{path}[{json.dumps(os_id)}]"), f"{path}[{json.dumps(os_id)}]")
        if loc is not None:
            out[os_id] = loc
    return out


def _options(value: object, path: str) -> Options:
    obj = _object(value, path)
    for key in obj:
        if key not in OPTION_KEYS:
            raise InputError(f"{path}.{key}: unknown option (known: {', '.join(sorted(OPTION_KEYS))})")
    drop = obj.get("drop_infeasible", False)
    if not isinstance(drop, bool):
        raise InputError(f"{path}.drop_infeasible: must be true or false, not {_kind(drop)}")
    weights = obj.get("weights")
    return Options(
        weights={} if weights is None else _object(weights, f"{path}.weights"),
        drop_infeasible=drop,
        max_state_age=_opt_number(obj, "max_state_age", path),
        max_metric_age=_opt_number(obj, "max_metric_age", path),
    )


def parse_request(value: object) -> RankRequest:
    """Validate the decoded JSON and turn it into plain dataclasses (job memory converted GB -> MB here)."""
    req = _object(value, "request")
    warnings: list[str] = []
    known = {key for names in ALIASES.values() for key in names}
    extra = sorted(key for key in req if key not in known)
    if extra:
        warnings.append(f"request: ignored unknown key(s): {', '.join(json.dumps(k) for k in extra[:10])}")

    job_key, job_raw = _pick(req, "job")
    if job_raw is None:
        raise InputError("job: missing")
    job, job_id, tool_version = _job(job_raw, job_key)

    dest_key, dest_raw = _pick(req, "destinations")
    if dest_raw is None:
        raise InputError("destinations: missing")
    if not isinstance(dest_raw, list):
        raise InputError(f"{dest_key}: must be a list, not {_kind(dest_raw)}")
    if len(dest_raw) > MAX_DESTINATIONS:
        raise InputError(f"{dest_key}: more than {MAX_DESTINATIONS} destinations")
    dests: list[DestinationRequest] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(dest_raw):
        dest = _destination(raw, i, f"{dest_key}[{i}]")
        if dest.id in seen:
            raise InputError(f"{dest_key}[{i}].id: duplicate of {dest_key}[{seen[dest.id]}].id")
        seen[dest.id] = i
        dests.append(dest)

    ds_key, ds_raw = _pick(req, "datasets")
    datasets: tuple[Dataset, ...] = ()
    if ds_raw is not None:
        datasets, ds_warnings = _datasets(ds_raw, ds_key)
        warnings.extend(ds_warnings)
    os_key, os_raw = _pick(req, "objectstores")
    objectstores = {} if os_raw is None else _objectstores(os_raw, os_key)
    _, opt_raw = _pick(req, "options")
    options = Options() if opt_raw is None else _options(opt_raw, "options")
    return RankRequest(
        job=job,
        destinations=tuple(dests),
        datasets=datasets,
        objectstores=objectstores,
        options=options,
        job_id=job_id,
        tool_version=tool_version,
        warnings=tuple(warnings),
    )
