"""The store's database handle: one peewee database plus what differs between SQLite and PostgreSQL
(parameters, id lists, datetimes, collation), transactions and bulk inserts.

Every query is bound to this object's peewee database, never to a global one: models are not bound
at module level, so several stores (files or servers) can be open in one process. peewee keeps one
connection per thread, so one Database serves every thread of a process.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any, TypeVar

import peewee

from metasched.store.convert import naive_utc, sqlite_text

T = TypeVar("T")
_STAGE_ABOVE = 1000  # conflict-skipping inserts of more rows go through COPY into a staging table


def quote(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (driver messages span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class Database:
    """A peewee database with the dialect helpers the store's modules share."""

    def __init__(self, orm: peewee.Database, shown: str, *, readonly: bool = False) -> None:
        self.orm = orm
        self.url = shown  # password removed: safe in error messages
        self.readonly = readonly
        self.is_postgres = isinstance(orm, peewee.PostgresqlDatabase)
        self.param: str = orm.param
        self._driver: Any = orm  # for the driver-level calls peewee leaves untyped (cursor, execute)
        # SQLite has one writer: this process's threads queue here rather than on its busy timeout.
        self.write_lock: AbstractContextManager[Any] = (
            nullcontext() if self.is_postgres else threading.RLock()
        )
        # What a failed write raises: peewee's own errors and the raw driver's (bulk paths use its cursor).
        errors: tuple[type[Exception], ...] = (peewee.PeeweeException, sqlite3.Error)
        if self.is_postgres:
            import psycopg  # the optional [postgres] extra, loaded only for a PostgreSQL store

            errors += (psycopg.Error,)
        self.errors = errors
        # Aware (or naive UTC) datetime -> what the driver stores: naive UTC; text on SQLite, like peewee.
        self.dt_in: Callable[[datetime | None], Any] = naive_utc if self.is_postgres else sqlite_text

    def close(self) -> None:
        """Close the calling thread's connection (other threads' close when those threads end)."""
        if not self.orm.is_closed() and not self.orm.in_transaction():
            self.orm.close()

    def connection(self) -> Any:
        """The calling thread's raw driver connection (sqlite3 or psycopg)."""
        return self._driver.connection()

    def cursor(self) -> Any:
        return self._driver.cursor()

    def client_cursor(self) -> Any:
        """A PostgreSQL cursor that binds parameters on the client: one round trip may then carry
        several statements (the server-side binding of psycopg's default cursor allows one)."""
        import psycopg

        return psycopg.ClientCursor(self.connection())

    def bind(self, query: T) -> T:
        """``query`` bound to this database (models are never bound globally)."""
        handle: Any = query
        bound: T = handle.bind(self.orm)
        return bound

    def rows(self, query: Any) -> list[tuple[Any, ...]]:
        """A select's rows as tuples, values converted by their fields (datetimes, booleans)."""
        return [tuple(row) for row in query.bind(self.orm).tuples()]

    def scalar(self, query: Any) -> Any:
        return query.bind(self.orm).scalar()

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a raw SELECT as the driver returns them (hot read paths: no peewee per value)."""
        rows: list[tuple[Any, ...]] = self._driver.execute_sql(sql, params).fetchall()
        return rows

    def fetch_query(self, query: Any) -> list[tuple[Any, ...]]:
        """A peewee select's rows as the driver returns them (no per-value conversion): large reads."""
        rows: list[tuple[Any, ...]] = self._driver.execute(query).fetchall()
        return rows

    def in_ids(self, column: str, ids: list[str]) -> tuple[str, list[Any]]:
        """``column`` is one of ``ids``, as SQL plus its parameters: one parameter however many ids,
        so no chunking, no SQLite variable limit and no per-id statement text to build and parse."""
        if self.is_postgres:
            return f"{column} = ANY({self.param})", [ids]
        return f"{column} IN (SELECT value FROM json_each({self.param}))", [json.dumps(ids)]

    def bytewise(self, column: str) -> str:
        """``column`` compared in byte order (prefix ranges): SQLite's default, PostgreSQL's "C"."""
        return f'{column} COLLATE "C"' if self.is_postgres else column

    @contextmanager
    def write_tx(self) -> Iterator[None]:
        """A write transaction.

        SQLite takes the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads first
        could not upgrade to a writer after another process committed. This process's threads queue on
        ``write_lock`` first: 32 collect workers writing big snapshots then wait their turn instead of
        running out SQLite's busy timeout.
        """
        handle: Any = self.orm
        with self.write_lock, handle.atomic() if self.is_postgres else handle.atomic("IMMEDIATE"):
            yield

    def insert_many(
        self,
        model: type[peewee.Model],
        names: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        ignore: bool = False,
    ) -> None:
        """Bulk insert of already-converted tuples (peewee's insert_many builds SQL per value).

        SQLite: executemany of one prepared INSERT. PostgreSQL: COPY, rows written by psycopg's COPY
        API; with ``ignore`` (skip rows that conflict) few rows go through INSERT ... ON CONFLICT,
        many through COPY into a staging table first, since COPY cannot skip conflicts.
        """
        if not rows:
            return
        fields = model._meta.fields
        table = quote(model._meta.table_name)
        columns = ", ".join(quote(fields[n].column_name) for n in names)
        cursor = self.cursor()
        if not self.is_postgres:
            verb = "INSERT OR IGNORE" if ignore else "INSERT"
            marks = ", ".join("?" * len(names))
            cursor.executemany(f"{verb} INTO {table} ({columns}) VALUES ({marks})", rows)
            return
        if ignore and len(rows) <= _STAGE_ABOVE:
            marks = ", ".join(["%s"] * len(names))
            cursor.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows
            )
            return
        target = table
        if ignore:
            target = quote(f"stage_{model._meta.table_name}")
            cursor.execute(
                f"CREATE TEMP TABLE {target} ON COMMIT DROP AS SELECT {columns} FROM {table} WITH NO DATA"
            )
        with cursor.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if ignore:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {target} ON CONFLICT DO NOTHING"
            )
            cursor.execute(f"DROP TABLE {target}")
