"""The operator view: one row per destination, built from config + store (``status``, ``/v1/status``).

``status_rows`` is pure; ``status_report`` and ``destination_detail`` add the few store reads the
rows need, so the CLI and the HTTP endpoint show the same objects.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from msgspec.structs import replace

from metasched.domain.destination import DestinationSummary
from metasched.policy import active_policies, recent_actions
from metasched.settings import Config
from metasched.store import Store
from metasched.store.reconcile import EMPTY, Calibration, calibration

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
QUEUE_SAMPLE = 200  # finished jobs per destination behind the median queue time


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


def status_rows(
    config: Config,
    summaries: Sequence[DestinationSummary],
    now: datetime,
    median_queue_s: Mapping[str, float | None] | None = None,
    ledger: Mapping[str, Calibration] | None = None,
) -> list[dict[str, Any]]:
    """Configured destinations first (config order), then any others the store still knows.

    A destination never collected has ``last_success`` null; ``stale`` is true when the last good
    snapshot is older than ``rank.max_state_age`` (rank then treats its state as unknown).
    ``disabled`` is the operator's reason while a disable is in force, ``disabled_until`` its end.
    ``ledger``: placements in flight and expired, and the prediction error (``Calibration.to_dict``).
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
            "enabled": cfg.enabled if cfg else False,
        }
        for key in COLUMNS[7:]:
            row[key] = getattr(s, key) if s else 0
        active = s is not None and s.disabled_at(now)
        row["disabled"] = s.disabled_reason if s and active else None
        row["disabled_until"] = _iso(s.disabled_until) if s and active else None
        median = (median_queue_s or {}).get(dest_id)
        row["median_queue_s"] = round(median, 1) if median is not None else None
        row["ledger"] = (ledger or {}).get(dest_id, EMPTY).to_dict()
        rows.append(row)
    return rows


def median_queue_times(store: Store, dest_ids: Sequence[str]) -> dict[str, float | None]:
    """Median queue wait (seconds) over each destination's last QUEUE_SAMPLE finished jobs, all tools."""
    out: dict[str, float | None] = {}
    for dest_id in dest_ids:
        waits = [r.queue_s for r in store.history(dest_id, QUEUE_SAMPLE) if r.queue_s is not None]
        out[dest_id] = statistics.median(waits) if waits else None
    return out


def status_report(config: Config, store: Store, now: datetime) -> list[dict[str, Any]]:
    """Every destination's row, with the median queue time and the ledger figures (what
    ``status --json`` prints)."""
    summaries = store.summaries()
    ids = list(dict.fromkeys([d.id for d in config.destinations] + [s.id for s in summaries]))
    rows = status_rows(config, summaries, now, median_queue_times(store, ids), calibration(store, ids))
    return add_policies(config, store, rows)


def add_policies(config: Config, store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``policy``: the node group's active policy (config or runtime override), ``last_enforced``: the
    most recent renice of this destination's jobs (docs/policies.md); both None outside any group."""
    by_dest: dict[str, dict[str, Any]] = {}
    for p in active_policies(config, store) if config.policies else []:
        for dest_id in p.config.destinations:
            by_dest[dest_id] = {"group": p.group, "name": p.name, "source": p.source}
    actions = {a.get("destination"): a for a in recent_actions(store)} if config.policies else {}
    for row in rows:
        row["policy"] = by_dest.get(row["id"])
        row["last_enforced"] = actions.get(row["id"])
    return rows


def destination_detail(config: Config, store: Store, dest_id: str, now: datetime) -> dict[str, Any] | None:
    """One destination's row plus its nodes and partitions; None when neither config nor store knows it."""
    summaries = store.summaries([dest_id])
    if not summaries and config.destination(dest_id) is None:
        return None
    rows = status_rows(
        _only(config, dest_id),
        summaries,
        now,
        median_queue_times(store, [dest_id]),
        calibration(store, [dest_id]),
    )
    add_policies(config, store, rows)
    row = rows[0]
    nodes = [asdict(n) for n in store.nodes(dest_id)]
    for n in nodes:
        n["partitions"] = list(n["partitions"])
    partitions = [asdict(p) for p in store.partitions(dest_id)]
    for p in partitions:
        p["limits"] = dict(p["limits"])
    return {"destination": row, "nodes": nodes, "partitions": partitions}


def _only(config: Config, dest_id: str) -> Config:
    return replace(config, destinations=tuple(d for d in config.destinations if d.id == dest_id))
