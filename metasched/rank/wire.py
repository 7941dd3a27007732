"""The rank request as it arrives: msgspec Structs with their constraints, one per JSON object.

These types are the contract: msgspec validates a request against them in C (straight from the bytes
on serve's hot path), and metasched/schemas/rank-request.json is generated from them
(``metasched.rank.schema``; the response's Structs are in ``metasched.rank.answer``).
``metasched.rank.request`` turns the request into the model's dataclasses and words every problem
as one line naming the field. Field names are the JSON keys; the aliases older
tpv-metascheduler-api clients send are fields of their own (``UNSET`` when absent, so giving two
names of one section is an error, not a silent choice).

Numbers are bounded by the largest float, so ``1e400`` (infinity after decoding) is refused in C.
"""

from __future__ import annotations

import sys
from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType

MAX_DESTINATIONS = 10_000
MAX_DATASETS = 100_000
MAX_ID_CHARS = 1024
FLOAT_MAX = sys.float_info.max

Count = Annotated[float, Meta(ge=0, le=FLOAT_MAX)]
Real = Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
Positive = Annotated[float, Meta(gt=0, le=FLOAT_MAX)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]
Ident = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
# RFC 3339 date-time; the zone is required: an unzoned time would be read in the wrong zone silently.
RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
Timestamp = Annotated[str, Meta(pattern=RFC3339)] | Count


class JobIn(Struct):
    """The job TPV maps (Galaxy's job and tool)."""

    tool_id: Annotated[Ident, Meta(description="Galaxy tool id (full Tool Shed id or short id).")]
    tool_version: str | None = None
    job_id: str | int | None = None
    cores: Annotated[Count | None, Meta(description="Default 1.")] = None
    mem: Annotated[Count | None, Meta(description="Memory in GB (TPV units). Default 0.")] = None
    gpus: Annotated[Count | None, Meta(description="Default 0.")] = None


class ContextIn(Struct):
    """TPV destination context; latitude, longitude and object_store_id are read from it when not given
    on the destination itself. Other keys are TPV's own and ignored."""

    latitude: Latitude | None = None
    longitude: Longitude | None = None
    object_store_id: str | None = None


class MetricsIn(Struct, forbid_unknown_fields=True):
    """Values that override the stored ones for this request."""

    queued: Count | None = None
    running: Count | None = None
    free_cores: Count | None = None
    free_mem_gb: Count | None = None
    free_gpus: Count | None = None
    total_cores: Count | None = None
    total_mem_gb: Count | None = None
    total_gpus: Count | None = None
    median_queue_s: Count | None = None
    median_run_s: Count | None = None
    status: Annotated[
        str | None,
        Meta(
            description="offline, down, drained, disabled or maintenance (any case, quotes ignored) make "
            "the destination infeasible; online, up, ok are in service; other values are reported and "
            "ignored."
        ),
    ] = None
    carbon_intensity: Annotated[
        Count | None,
        Meta(description="Grid carbon intensity, gCO2/kWh; used only when carbon_s_per_kg > 0."),
    ] = None
    price_day_ahead: Annotated[
        Real | None,
        Meta(
            description="Day-ahead electricity price, EUR/MWh (may be negative: counts as 0); used only "
            "when price_s_per_eur > 0."
        ),
    ] = None
    observed_at: Annotated[
        Timestamp | None,
        Meta(
            description="When this destination's state was observed (RFC 3339 with a zone, or Unix "
            "seconds): placements recorded since then count as queued demand here. Default: its last "
            "successful collect."
        ),
    ] = None


class DestinationIn(Struct):
    """One TPV candidate destination. Other keys (runner, params, ...) are TPV's own and ignored."""

    id: Annotated[Ident, Meta(description="TPV destination id.")]
    tpv_score: Annotated[Real | None, Meta(description="TPV's d.score(entity).")] = None
    max_accepted_cores: Count | None = None
    max_accepted_mem: Annotated[Count | None, Meta(description="GB.")] = None
    max_accepted_gpus: Count | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    object_store_id: Annotated[
        str | None, Meta(description="Datasets in this object store need no staging.")
    ] = None
    context: ContextIn | None = None
    queued_job_count: Annotated[Count | None, Meta(description="Seed style; same as metrics.queued.")] = None
    running_job_count: Annotated[Count | None, Meta(description="Seed style; same as metrics.running.")] = (
        None
    )
    metrics: MetricsIn | None = None


class DatasetIn(Struct):
    """One input dataset (Galaxy's helpers.get_dataset_attributes)."""

    object_store_id: str | None = None
    size: Annotated[Count | None, Meta(description="Bytes; null counts as 0 with a warning.")] = None


class ObjectStoreIn(Struct):
    latitude: Latitude | None = None
    longitude: Longitude | None = None


class WeightsIn(Struct, forbid_unknown_fields=True):
    """Model parameters (docs/rank.md); override config rank.weights."""

    bandwidth_mb_s: Positive | UnsetType = UNSET
    halving_km: Positive | UnsetType = UNSET
    unknown_distance_km: Count | UnsetType = UNSET
    colocated_km: Count | UnsetType = UNSET
    dispatch_s: Count | UnsetType = UNSET
    default_run_s: Count | UnsetType = UNSET
    unknown_queue_s: Count | UnsetType = UNSET
    history_weight: Fraction | UnsetType = UNSET
    queued_job_cores: Count | UnsetType = UNSET
    queued_job_s: Count | UnsetType = UNSET
    min_history: Count | UnsetType = UNSET
    tpv_weight: Count | UnsetType = UNSET
    tpv_max_discount: Fraction | UnsetType = UNSET
    carbon_s_per_kg: (
        Annotated[Count, Meta(description="Seconds of turnaround traded for a kg of CO2; 0 (default): off.")]
        | UnsetType
    ) = UNSET
    price_s_per_eur: (
        Annotated[
            Count,
            Meta(description="Seconds of turnaround traded for a euro of electricity; 0 (default): off."),
        ]
        | UnsetType
    ) = UNSET
    watts_per_core: Annotated[Count, Meta(description="Default 10.")] | UnsetType = UNSET
    watts_per_gpu: Annotated[Count, Meta(description="Default 300.")] | UnsetType = UNSET
    carbon_max_age_s: Annotated[Positive, Meta(description="Default 7200.")] | UnsetType = UNSET


class OptionsIn(Struct, forbid_unknown_fields=True):
    weights: WeightsIn | None = None
    drop_infeasible: bool = False
    max_state_age: Annotated[
        Count | None, Meta(description="Seconds; default config rank.max_state_age.")
    ] = None
    max_metric_age: Annotated[
        Count | None, Meta(description="Seconds; default config influxdb.max_age (900).")
    ] = None
    explain: Annotated[
        bool,
        Meta(
            description="false: no `reasons` in the answer, and none written: the order and the components "
            "are the same, the answer is cheaper (TPV's hooks read only sorted_destinations)."
        ),
    ] = True


Destinations = Annotated[
    list[DestinationIn],
    Meta(
        max_length=MAX_DESTINATIONS,
        description="TPV candidate destinations, in TPV's order (the final tie-breaker). Ids must be unique.",
    ),
]
Datasets = Annotated[dict[str, DatasetIn], Meta(max_length=MAX_DATASETS)]
ObjectStores = dict[str, ObjectStoreIn]


class RankRequestIn(Struct):
    """One job and its TPV candidate destinations (stdin of `metasched rank`). Aliases are the keys
    older tpv-metascheduler-api clients send; give each section under one name only. Numbers are JSON
    numbers (strings such as "4" are rejected), finite. Unknown top-level keys are ignored with a
    warning; unknown keys inside `options`, `weights` and `metrics` are errors. See docs/rank.md."""

    job: JobIn | UnsetType | None = UNSET
    job_info: JobIn | UnsetType | None = UNSET
    static_job_info: JobIn | UnsetType | None = UNSET
    destinations: Destinations | UnsetType | None = UNSET
    current_dest_info: Destinations | UnsetType | None = UNSET
    datasets: Datasets | UnsetType | None = UNSET
    dataset_attributes: Datasets | UnsetType | None = UNSET
    static_dataset_info: Datasets | UnsetType | None = UNSET
    objectstores: ObjectStores | UnsetType | None = UNSET
    static_objectstores_info: ObjectStores | UnsetType | None = UNSET
    options: OptionsIn | UnsetType | None = UNSET


class StrictRankRequestIn(RankRequestIn, forbid_unknown_fields=True):
    """The fast path's type: an unknown top-level key sends the request to the path that warns of it."""
