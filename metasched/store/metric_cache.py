"""The metrics cache: rows fetched from InfluxDB (or other sources), replaced per source by collect
and read by rank for its destinations and tool."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from metasched.domain.destination import MetricRow
from metasched.store import models
from metasched.store.convert import aware_from_db
from metasched.store.database import Database
from metasched.store.galaxy import versionless

_COLUMNS = (
    "source",
    "destination_id",
    "tool_id",
    "name",
    "value",
    "text",
    "observed_at",
    "fetched_at",
)
_UNSET: Any = object()  # "not parsed yet" in the per-call date memo (None is a valid parsed value)


def replace_metrics(db: Database, source: str, rows: Sequence[MetricRow], fetched_at: datetime) -> None:
    """Replace every cached row of ``source`` in one transaction.

    Rows are stored under ``source`` (their own ``source`` field is not consulted) and with
    ``fetched_at``; of rows with equal (destination_id, tool_id, name) the last one wins.
    """
    latest: dict[tuple[str, str, str], MetricRow] = {}
    for r in rows:
        latest[(r.destination_id, r.tool_id, r.name)] = r
    fetched = db.dt_in(fetched_at)
    values = [
        (source, r.destination_id, r.tool_id, r.name, r.value, r.text, db.dt_in(r.observed_at), fetched)
        for r in latest.values()
    ]
    M = models.Metric
    with db.write_tx():
        db.bind(M.delete().where(M.source == source)).execute()
        db.insert_many(M, _COLUMNS, values)


def metrics(db: Database, dest_ids: Sequence[str], tool_id: str | None = None) -> list[MetricRow]:
    """Cached metric rows for these destinations: per-destination rows plus this tool's rows,
    of any version of a Tool Shed tool (``tool_id`` with another last segment, or none)."""
    p = db.param
    tools = [""] if not tool_id else ["", tool_id]
    base = versionless(tool_id) if tool_id else ""
    if base != (tool_id or ""):
        tools.append(base)
    where, params = db.in_ids('"destination_id"', list(dict.fromkeys(dest_ids)))
    match = f'"tool_id" IN ({", ".join([p] * len(tools))})'
    extra: list[Any] = []
    if base != (tool_id or ""):
        # Any version: base + "/" <= tool_id < base + "0" ("0" follows "/" in byte order).
        column = db.bytewise('"tool_id"')
        match = f"({match} OR ({column} >= {p} AND {column} < {p}))"
        extra = [base + "/", base + "0"]
    sql = (
        'SELECT "source", "destination_id", "name", "value", "text", "tool_id", "observed_at", '
        f'"fetched_at" FROM "metric" WHERE {where} AND {match} '
        'ORDER BY "source", "destination_id", "tool_id", "name"'
    )
    # Rows of one fetch share a few timestamps (one fetched_at per source): parse each once.
    dates: dict[Any, datetime | None] = {}
    out = []
    for src, dest, name, value, text, tid, observed, fetched in db.fetch(sql, [*params, *tools, *extra]):
        seen = dates.get(observed, _UNSET)
        if seen is _UNSET:
            seen = dates[observed] = aware_from_db(observed)
        got = dates.get(fetched, _UNSET)
        if got is _UNSET:
            got = dates[fetched] = aware_from_db(fetched)
        # value is a REAL / double precision column: a float or None from either driver.
        out.append(MetricRow(src, dest, name, value, text, tid, seen, got))
    return out
