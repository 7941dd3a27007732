"""The ranking model's parameters: their defaults, and the check of overrides from the config and requests.

Here rather than in ``metasched.rank`` because ``config check`` validates ``rank.weights`` too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

from metasched.domain.errors import InputError


@dataclass(frozen=True, slots=True)
class Weights:
    """Model parameters; ``config.rank.weights`` and request ``options.weights`` override the defaults."""

    bandwidth_mb_s: float = 100.0  # MB/s (10^6 bytes) of a transfer over zero distance
    halving_km: float = 2000.0  # distance at which the throughput is half of bandwidth_mb_s
    unknown_distance_km: float = 3000.0  # assumed when a dataset's or destination's location is unknown
    colocated_km: float = 10.0  # an object store this close to a destination is its own: no staging
    dispatch_s: float = 5.0  # submit-to-start latency when resources are free now
    default_run_s: float = 1800.0  # run time of a tool nobody has history for
    unknown_queue_s: float = 600.0  # queue wait when nothing at all is known about a destination
    history_weight: float = 0.25  # share of the historical median queue time in the queue estimate
    queued_job_cores: float = 1.0  # cores assumed per queued job when only job counts are known
    queued_job_s: float = 1800.0  # run time of the jobs ahead when the destination has no history
    min_history: float = 3.0  # own finished jobs needed before they beat InfluxDB medians
    tpv_weight: float = 0.1  # TPV score points scale: tanh(0.1 x score), ~1 % off per point near 0
    tpv_max_discount: float = 0.1  # TPV's tags never move a turnaround by more than 10 %: a near-tie breaker
    # Opt-in energy costs (docs/rank.md "Carbon and price"): 0 leaves the answer exactly as without them.
    carbon_s_per_kg: float = 0.0  # seconds of turnaround a user trades for one kg of CO2
    price_s_per_eur: float = 0.0  # seconds of turnaround a user trades for one euro of electricity
    watts_per_core: float = 10.0  # per busy core, with its share of memory, fans and cooling
    watts_per_gpu: float = 300.0  # per busy GPU: a V100/A100 PCIe board's TDP
    carbon_max_age_s: float = 7200.0  # older carbon/price figures are unknown; grid figures change hourly


DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType({k: float(v) for k, v in asdict(Weights()).items()})

_POSITIVE = frozenset({"bandwidth_mb_s", "halving_km", "carbon_max_age_s"})
_FRACTION = frozenset({"history_weight", "tpv_max_discount"})


def make_weights(*layers: tuple[str, Mapping[str, object]]) -> Weights:
    """Defaults overridden by each ``(path, mapping)`` layer in turn; bad keys or values raise InputError."""
    values: dict[str, float] = dict(DEFAULT_WEIGHTS)
    for path, layer in layers:
        for key, raw in layer.items():
            where = f"{path}.{key}"
            if key not in DEFAULT_WEIGHTS:
                raise InputError(f"{where}: unknown weight (known: {', '.join(sorted(DEFAULT_WEIGHTS))})")
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise InputError(f"{where}: must be a number")
            val = float(raw)
            if not math.isfinite(val) or val < 0:
                raise InputError(f"{where}: must be a finite number >= 0")
            if key in _POSITIVE and val == 0:
                raise InputError(f"{where}: must be > 0")
            if key in _FRACTION and val > 1:
                raise InputError(f"{where}: must be between 0 and 1")
            values[key] = val
    return Weights(**values)
