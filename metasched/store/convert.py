"""Datetimes between the domain (aware UTC) and the columns (naive UTC: text on SQLite, TIMESTAMP on
PostgreSQL). The bulk paths skip peewee's field conversion, so they convert here, once per value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from metasched.store import models

_DT_FIELD: Any = models.Job.submit_time  # any DateTimeField: its python_value parses SQLite's other forms


@overload
def naive_utc(value: datetime) -> datetime: ...
@overload
def naive_utc(value: None) -> None: ...
@overload
def naive_utc(value: datetime | None) -> datetime | None: ...
def naive_utc(value: datetime | None) -> datetime | None:
    """Aware -> naive UTC (the stored form, and what PostgreSQL's driver is given); naive values are
    taken as UTC already."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def sqlite_text(value: datetime | None) -> str | None:
    """The text SQLite stores for a datetime (naive UTC, the ``str()`` form peewee and sqlite3 write).

    Hot for 100k-job snapshots: UTC-aware values, the adapters' normal case, take one ``isoformat``.
    """
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.isoformat(" ")[:-6]  # drop "+00:00"
    return naive_utc(value).isoformat(" ")


def naive_from_db(value: Any) -> datetime | None:
    """A datetime column as the driver returned it (ISO text on SQLite) -> naive UTC datetime."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = _DT_FIELD.python_value(value)  # other formats peewee accepts (e.g. a bare date)
        return parsed if isinstance(parsed, datetime) else None


@overload
def aware_from_db(value: datetime) -> datetime: ...
@overload
def aware_from_db(value: Any) -> datetime | None: ...
def aware_from_db(value: Any) -> datetime | None:
    """A datetime column as the driver (or peewee) returned it -> aware UTC.

    SQLite's naive UTC text parses straight to an aware value (``+00:00`` gives the UTC singleton):
    ``datetime.replace`` costs more than the parse itself, and rank converts thousands per call.
    """
    if type(value) is str:
        try:
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            pass
    naive = naive_from_db(value)
    return None if naive is None else naive.replace(tzinfo=UTC)
