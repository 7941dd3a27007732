"""Great-circle distance and the transfer-time model used for staging input data."""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in decimal degrees."""
    return distance_km(point(lat1, lon1), point(lat2, lon2))


def point(lat: float, lon: float) -> tuple[float, float, float]:
    """(latitude in radians, its cosine, longitude in degrees): what ``distance_km`` needs of a point.

    Ranking measures every object store against every destination; preparing each point once
    avoids recomputing the same radians and cosines for each pair.
    """
    p = math.radians(lat)
    return p, math.cos(p), lon


def distance_km(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Haversine distance in km between two prepared points (same arithmetic as ``haversine_km``)."""
    dp = b[0] - a[0]
    dl = math.radians(b[2] - a[2])
    h = math.sin(dp / 2) ** 2 + a[1] * b[1] * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def bandwidth_bytes_s(distance_km: float, base_mb_s: float, halving_km: float) -> float:
    """Effective throughput falls with distance (RTT-bound TCP): ``base / (1 + d / halving_km)``.

    ``base_mb_s`` is in MB/s (10^6 bytes); at ``halving_km`` the throughput is half the base.
    """
    return base_mb_s * 1e6 / (1.0 + max(distance_km, 0.0) / halving_km)


def transfer_s(size_bytes: float, distance_km: float, base_mb_s: float, halving_km: float) -> float:
    """Seconds to move ``size_bytes`` over ``distance_km``."""
    return size_bytes / bandwidth_bytes_s(distance_km, base_mb_s, halving_km)
