"""Validate a rank request against its msgspec Structs (metasched.rank.wire) and build the model's input.

Two ways in, one result: ``parse_request_bytes`` decodes and validates the bytes in one pass (serve's
hot path); anything it refuses, or a request with unknown top-level keys (a warning, not an error),
goes the exact way: ``decode_request`` (the JSON value, its problems worded) then ``parse_request``,
which validates section by section in the order the errors are reported. Every problem raises
InputError with one line naming the field path, e.g. ``destinations[3].id: missing``. Keys and
aliases follow docs/rank.md and metasched/schemas/rank-request.json (generated from the Structs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from metasched.domain.errors import InputError
from metasched.rank.model import MB_PER_GB, Dataset, JobSpec, Location
from metasched.rank.wire import (
    FLOAT_MAX,
    MAX_DATASETS,
    MAX_DESTINATIONS,
    MAX_ID_CHARS,
    DatasetIn,
    DestinationIn,
    JobIn,
    MetricsIn,
    ObjectStoreIn,
    OptionsIn,
    RankRequestIn,
    StrictRankRequestIn,
    WeightsIn,
)

__all__ = [
    "MAX_DATASETS",
    "MAX_DESTINATIONS",
    "MAX_ID_CHARS",
    "MAX_REQUEST_BYTES",
    "DestinationRequest",
    "InlineMetrics",
    "Options",
    "RankRequest",
    "decode_request",
    "parse_request",
    "parse_request_bytes",
]

MAX_REQUEST_BYTES = 16 * 1024 * 1024

ALIASES: Mapping[str, tuple[str, ...]] = {
    "job": ("job", "job_info", "static_job_info"),
    "destinations": ("destinations", "current_dest_info"),
    "datasets": ("datasets", "dataset_attributes", "static_dataset_info"),
    "objectstores": ("objectstores", "static_objectstores_info"),
    "options": ("options",),
}
OPTION_KEYS = frozenset(OptionsIn.__struct_fields__)
METRIC_KEYS = frozenset(MetricsIn.__struct_fields__)
WEIGHT_KEYS = frozenset(WeightsIn.__struct_fields__)
# What an unknown key inside a closed object is called, by the object's key.
_UNKNOWN_KEY = {"metrics": ("metric", METRIC_KEYS), "options": ("option", OPTION_KEYS)}
_UNKNOWN_KEY["weights"] = ("weight", WEIGHT_KEYS)
# RFC 3339 date-time with a zone; the Struct's pattern is searched, this one must match whole. Both
# patterns are compiled on first use (re's cache): most runs of `metasched rank` need neither.
_RFC3339 = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
_PROBLEM = r"(?s)(?P<msg>.*?)(?: - at `\$(?P<at>.*)`)?"
_KINDS = {"null": "null", "bool": "a boolean", "str": "a string", "int": "a number", "float": "a number"}
_KINDS |= {"array": "a list", "object": "an object"}
_WANTED = {"float": "a number", "str": "a string", "object": "an object", "array": "a list"}
_WANTED |= {"bool": "true or false", "int | str": "a string or an integer"}
_WANTED["float | str"] = "an RFC 3339 string or Unix seconds"
T = TypeVar("T")


class InlineMetrics(msgspec.Struct, frozen=True):
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


class DestinationRequest(msgspec.Struct):
    """One candidate as the request gives it; built once per destination per request, never changed."""

    id: str
    index: int
    tpv_score: float = 0.0
    max_cores: float | None = None
    max_mem_mb: float | None = None
    max_gpus: float | None = None
    location: Location | None = None
    object_store_id: str | None = None
    metrics: InlineMetrics = NO_METRICS


class Options(msgspec.Struct, frozen=True):
    weights: Mapping[str, object] = msgspec.field(default_factory=dict)
    drop_infeasible: bool = False
    max_state_age: float | None = None
    max_metric_age: float | None = None
    explain: bool = True


class RankRequest(msgspec.Struct, frozen=True):
    job: JobSpec
    destinations: tuple[DestinationRequest, ...]
    datasets: tuple[Dataset, ...] = ()
    objectstores: Mapping[str, Location] = msgspec.field(default_factory=dict)
    options: Options = msgspec.field(default_factory=Options)
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


def _value_at(value: object, at: str) -> object:
    """The value a msgspec error path (``.a[3].b``) points at inside ``value``; None if it is not there."""
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", at):
        if name and isinstance(value, dict):
            value = value.get(name)
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
    return value


def _bound(op: str, limit: float, where: str) -> str:
    if abs(limit) == FLOAT_MAX:
        return f"{where}: must be finite"
    if where.rpartition(".")[0].endswith("weights"):  # make_weights' words, as for config rank.weights
        if op == ">=":
            return f"{where}: must be a finite number >= 0"
        if op == "<=":
            return f"{where}: must be between 0 and 1"
    return f"{where}: must be {op} {limit:g}"


def _problem(text: str, path: str, raw: object) -> InputError:
    """msgspec's ValidationError text for ``raw`` (the object at ``path``) as our one line."""
    match = re.fullmatch(_PROBLEM, text)
    assert match is not None  # the pattern matches any text
    msg, at = match["msg"], match["at"] or ""
    where = path + at
    if m := re.fullmatch(r"Object missing required field `(.*)`", msg):
        return InputError(f"{where}.{m[1]}: missing")
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", msg):
        what, known = _UNKNOWN_KEY.get(where.rpartition(".")[2], ("key", frozenset()))
        return InputError(f"{where}.{m[1]}: unknown {what} (known: {', '.join(sorted(known))})")
    if m := re.fullmatch(r"Expected `(.*)`, got `(.*)`", msg):
        wanted = m[1].removesuffix(" | null")
        if m[2] == "null" and wanted == "str":
            return InputError(f"{where}: missing")
        if where.rpartition(".")[0].endswith("weights"):
            return InputError(f"{where}: must be a number")
        return InputError(f"{where}: must be {_WANTED.get(wanted, wanted)}, not {_KINDS.get(m[2], m[2])}")
    if m := re.fullmatch(r"Expected `str` of length ([<>]=) (\d+)", msg):
        return InputError(
            f"{where}: must not be empty" if m[1] == ">=" else f"{where}: longer than {m[2]} characters"
        )
    if m := re.fullmatch(r"Expected `(array|object)` of length <= (\d+)", msg):
        return InputError(f"{where}: more than {m[2]} {'destinations' if m[1] == 'array' else 'datasets'}")
    if m := re.fullmatch(r"Expected `float` ([<>]=?) (\S+)", msg):
        return InputError(_bound(m[1], float(m[2]), where))
    if msg == "Number out of range":
        return InputError(f"{where}: number out of range")
    if msg.startswith("Expected `str` matching regex"):
        return _bad_time(where, str(_value_at(raw, at)))
    return InputError(f"{where}: {msg[:1].lower()}{msg[1:]}")


def _bad_time(where: str, value: str) -> InputError:
    return InputError(
        f"{where}: must be an RFC 3339 time with a zone (e.g. 2026-11-23T12:00:00Z) "
        f"or Unix seconds, got {value[:40]!r}"
    )


def _convert(raw: object, kind: type[T], path: str) -> T:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise _problem(str(exc), path, raw) from None


def _location(lat: float | None, lon: float | None, path: str) -> Location | None:
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        missing = "latitude" if lat is None else "longitude"
        raise InputError(f"{path}.{missing}: missing (both latitude and longitude are needed)")
    return Location(lat, lon)


def _timestamp(value: str | float, where: str) -> datetime:
    """An RFC 3339 string with a zone, or Unix seconds, as an aware UTC datetime."""
    if isinstance(value, str):
        if re.fullmatch(_RFC3339, value) is None:
            raise _bad_time(where, value)
        text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
        frac = re.search(r"\.(\d+)", text)
        if frac is not None and len(frac.group(1)) > 6:  # datetime keeps microseconds
            text = text[: frac.start(1) + 6] + text[frac.end(1) :]
        try:
            return datetime.fromisoformat(text.replace("t", "T", 1)).astimezone(UTC)
        except (ValueError, OverflowError):
            raise InputError(f"{where}: not a valid date and time, got {value[:40]!r}") from None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        raise InputError(f"{where}: Unix seconds out of range") from None


def _gb(value: float | None) -> float | None:
    return None if value is None else value * MB_PER_GB


def _metrics(m: MetricsIn, path: str) -> InlineMetrics:
    seen = m.observed_at
    return InlineMetrics(
        m.queued,
        m.running,
        m.free_cores,
        _gb(m.free_mem_gb),
        m.free_gpus,
        m.total_cores,
        _gb(m.total_mem_gb),
        m.total_gpus,
        m.median_queue_s,
        m.median_run_s,
        m.status,
        m.carbon_intensity,
        m.price_day_ahead,
        None if seen is None else _timestamp(seen, f"{path}.observed_at"),
    )


def _destination(d: DestinationIn, index: int, key: str) -> DestinationRequest:
    """The model's view of ``key[index]``; only what the Structs cannot say is checked here. Runs per
    destination per request: the common shapes (coordinates given, nothing inline) take no detour."""
    lat, lon = d.latitude, d.longitude
    if lat is not None and lon is not None:
        location: Location | None = Location(lat, lon)
    else:
        location = _location(lat, lon, f"{key}[{index}]")
    store = d.object_store_id
    ctx = d.context
    if ctx is not None:
        if location is None:
            location = _location(ctx.latitude, ctx.longitude, f"{key}[{index}].context")
        if store is None:
            store = ctx.object_store_id
    metrics = NO_METRICS if d.metrics is None else _metrics(d.metrics, f"{key}[{index}].metrics")
    queued, running = d.queued_job_count, d.running_job_count
    if queued is not None and metrics.queued is None:
        metrics = msgspec.structs.replace(metrics, queued=queued)
    if running is not None and metrics.running is None:
        metrics = msgspec.structs.replace(metrics, running=running)
    mem = d.max_accepted_mem
    return DestinationRequest(
        d.id,
        index,
        d.tpv_score or 0.0,
        d.max_accepted_cores,
        None if mem is None else mem * MB_PER_GB,
        d.max_accepted_gpus,
        location,
        store,
        metrics,
    )


def _destinations(items: Iterable[DestinationIn], key: str) -> tuple[DestinationRequest, ...]:
    out: list[DestinationRequest] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        dest = _destination(item, i, key)
        first = seen.setdefault(dest.id, i)
        if first != i:
            raise InputError(f"{key}[{i}].id: duplicate of {key}[{first}].id")
        out.append(dest)
    return tuple(out)


def _datasets(items: Iterable[tuple[str, DatasetIn]], key: str, warnings: list[str]) -> tuple[Dataset, ...]:
    out: list[Dataset] = []
    unsized = 0
    for ds_id, attrs in items:
        if attrs.size is None:
            unsized += 1
        out.append(Dataset(ds_id, attrs.object_store_id, attrs.size or 0.0))
    if unsized:
        warnings.append(f"{key}: {unsized} dataset(s) without a size counted as 0 bytes")
    return tuple(out)


def _objectstores(items: Iterable[tuple[str, ObjectStoreIn]], key: str) -> dict[str, Location]:
    out: dict[str, Location] = {}
    for os_id, raw in items:
        loc = _location(raw.latitude, raw.longitude, f"{key}[{json.dumps(os_id)}]")
        if loc is not None:
            out[os_id] = loc
    return out


def _options(o: OptionsIn | None) -> Options:
    if o is None:
        return Options()
    w = o.weights
    weights = {} if w is None else {k: v for k in WEIGHT_KEYS if (v := getattr(w, k)) is not msgspec.UNSET}
    return Options(weights, o.drop_infeasible, o.max_state_age, o.max_metric_age, o.explain)


def _job(job: JobIn) -> JobSpec:
    return JobSpec(
        job.tool_id,
        1.0 if job.cores is None else job.cores,
        0.0 if job.mem is None else job.mem * MB_PER_GB,
        0.0 if job.gpus is None else job.gpus,
    )


def _given(names: Iterable[str], present: Mapping[str, object] | RankRequestIn) -> list[str]:
    if isinstance(present, RankRequestIn):
        return [n for n in names if getattr(present, n) is not msgspec.UNSET]
    return [n for n in names if n in present]


def _pick(req: Mapping[str, Any] | RankRequestIn, name: str) -> tuple[str, Any]:
    """The value under ``name`` or one of its aliases; two of them at once is ambiguous."""
    present = _given(ALIASES[name], req)
    if len(present) > 1:
        raise InputError(f"{present[1]}: given together with {present[0]} (aliases of {name})")
    if not present:
        return name, None
    return present[0], req[present[0]] if isinstance(req, Mapping) else getattr(req, present[0])


def parse_request_bytes(data: bytes) -> RankRequest:
    """Bytes -> RankRequest, decoded and validated in one pass by msgspec; anything it refuses (and a
    request with unknown top-level keys) is re-read by ``decode_request``/``parse_request``, which
    word the problem exactly as the CLI does."""
    if len(data) <= MAX_REQUEST_BYTES:
        try:
            wire = msgspec.json.decode(data, type=StrictRankRequestIn)
        except msgspec.MsgspecError:
            pass
        else:
            return _from_wire(wire)
    return parse_request(decode_request(data))


def _from_wire(wire: RankRequestIn) -> RankRequest:
    _, job = _pick(wire, "job")
    if job is None:
        raise InputError("job: missing")
    dest_key, dests = _pick(wire, "destinations")
    if dests is None:
        raise InputError("destinations: missing")
    destinations = _destinations(dests, dest_key)
    warnings: list[str] = []
    ds_key, ds = _pick(wire, "datasets")
    datasets = () if ds is None else _datasets(ds.items(), ds_key, warnings)
    os_key, stores = _pick(wire, "objectstores")
    objectstores = {} if stores is None else _objectstores(stores.items(), os_key)
    return RankRequest(
        _job(job),
        destinations,
        datasets,
        objectstores,
        _options(_pick(wire, "options")[1]),
        job.job_id,
        job.tool_version,
        tuple(warnings),
    )


def _each(raw: list[Any], kind: type[T], key: str) -> Iterator[T]:
    for i, item in enumerate(raw):
        yield _convert(item, kind, f"{key}[{i}]")


def _entries(raw: object, kind: type[T], key: str) -> Iterator[tuple[str, T]]:
    for k, item in _object(raw, key).items():
        yield k, _convert(item, kind, f"{key}[{json.dumps(k)}]")


def parse_request(value: object) -> RankRequest:
    """Validate the decoded JSON section by section (job, destinations one by one, datasets, object
    stores, options: the order problems are reported in) and build the model's input (GB -> MB)."""
    req = _object(value, "request")
    warnings: list[str] = []
    known = {key for names in ALIASES.values() for key in names}
    extra = sorted(key for key in req if key not in known)
    if extra:
        warnings.append(f"request: ignored unknown key(s): {', '.join(json.dumps(k) for k in extra[:10])}")

    job_key, job_raw = _pick(req, "job")
    if job_raw is None:
        raise InputError("job: missing")
    job = _convert(_object(job_raw, job_key), JobIn, job_key)

    dest_key, dest_raw = _pick(req, "destinations")
    if dest_raw is None:
        raise InputError("destinations: missing")
    if not isinstance(dest_raw, list):
        raise InputError(f"{dest_key}: must be a list, not {_kind(dest_raw)}")
    if len(dest_raw) > MAX_DESTINATIONS:
        raise InputError(f"{dest_key}: more than {MAX_DESTINATIONS} destinations")
    destinations = _destinations(_each(dest_raw, DestinationIn, dest_key), dest_key)

    ds_key, ds_raw = _pick(req, "datasets")
    datasets: tuple[Dataset, ...] = ()
    if ds_raw is not None:
        if len(_object(ds_raw, ds_key)) > MAX_DATASETS:
            raise InputError(f"{ds_key}: more than {MAX_DATASETS} datasets")
        datasets = _datasets(_entries(ds_raw, DatasetIn, ds_key), ds_key, warnings)
    os_key, os_raw = _pick(req, "objectstores")
    objectstores = {} if os_raw is None else _objectstores(_entries(os_raw, ObjectStoreIn, os_key), os_key)
    _, opt_raw = _pick(req, "options")
    options = None if opt_raw is None else _convert(_object(opt_raw, "options"), OptionsIn, "options")
    return RankRequest(
        _job(job),
        destinations,
        datasets,
        objectstores,
        _options(options),
        job.job_id,
        job.tool_version,
        tuple(warnings),
    )
