"""The operator view: one row per destination, built from config + store summaries (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from metasched.config import Config
from metasched.store import DestinationSummary

COLUMNS = (
    "id",
    "scheduler",
    "reachable",
    "last_success",
    "age_s",
    "stale",
    "error",
    "cores_total",
    "cores_free",
    "mem_total_mb",
    "mem_free_mb",
    "gpus_total",
    "gpus_free",
    "nodes_total",
    "nodes_unavailable",
    "jobs_running",
    "jobs_queued",
    "jobs_held",
)


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


def status_rows(
    config: Config, summaries: Sequence[DestinationSummary], now: datetime
) -> list[dict[str, Any]]:
    """Configured destinations first (config order), then any others the store still knows.

    A destination never collected has ``last_success`` null; ``stale`` is true when the last good
    snapshot is older than ``rank.max_state_age`` (rank then treats its state as unknown).
    """
    by_id = {s.id: s for s in summaries}
    order = [d.id for d in config.destinations] + sorted(set(by_id) - {d.id for d in config.destinations})
    rows = []
    for dest_id in order:
        s = by_id.get(dest_id)
        cfg = config.destination(dest_id)
        age = (now - s.last_success).total_seconds() if s and s.last_success else None
        row: dict[str, Any] = {
            "id": dest_id,
            "scheduler": cfg.scheduler if cfg else (s.scheduler if s else ""),
            "reachable": bool(s and s.reachable),
            "last_success": _iso(s.last_success) if s else None,
            "age_s": round(age, 1) if age is not None else None,
            "stale": age is None or age > config.rank.max_state_age,
            "error": s.error if s else None,
            "configured": cfg is not None,
        }
        for key in COLUMNS[7:]:
            row[key] = getattr(s, key) if s else 0
        row["disabled"] = s.disabled_reason if s and s.disabled_reason else None
        rows.append(row)
    return rows
