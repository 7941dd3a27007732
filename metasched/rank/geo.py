"""Great-circle distance and the transfer-time model used for staging input data."""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in decimal degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def bandwidth_bytes_s(distance_km: float, base_mb_s: float, halving_km: float) -> float:
    """Effective throughput falls with distance (RTT-bound TCP): ``base / (1 + d / halving_km)``.

    ``base_mb_s`` is in MB/s (10^6 bytes); at ``halving_km`` the throughput is half the base.
    """
    return base_mb_s * 1e6 / (1.0 + max(distance_km, 0.0) / halving_km)


def transfer_s(size_bytes: float, distance_km: float, base_mb_s: float, halving_km: float) -> float:
    """Seconds to move ``size_bytes`` over ``distance_km``."""
    return size_bytes / bandwidth_bytes_s(distance_km, base_mb_s, halving_km)
