"""Opening a store: the URL's peewee database (SQLite pragmas, the shareable file, PostgreSQL session
options), then its schema checked, created or migrated."""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import Any

import peewee

from metasched.domain.errors import ConfigError
from metasched.settings.database_url import DatabaseURL, parse_url
from metasched.store import generation, inflight, models
from metasched.store.database import Database, one_line
from metasched.store.kv import get_setting, put_setting
from metasched.store.models import SCHEMA_VERSION

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0  # how long a SQLite writer waits for another (collect of another destination)
VERSION_KEY = "schema_version"


def open_database(
    url: str, *, readonly: bool = False, busy_timeout: float | None = None, connect_timeout: int = 10
) -> Database:
    """The prepared database behind ``url`` (see ``Store.open`` for the arguments).

    Raises ConfigError naming ``database`` when the URL is unusable, the database cannot be opened,
    or its schema is newer than this metasched (or missing or older, when ``readonly``).
    """
    parsed = parse_url(url)
    db = Database(
        _peewee_database(parsed, readonly, busy_timeout, connect_timeout), parsed.shown, readonly=readonly
    )
    try:
        prepare(db)
    except BaseException as exc:
        db.close()
        if isinstance(exc, (peewee.PeeweeException, sqlite3.Error, OSError)):
            raise ConfigError([f"database: cannot open {parsed.shown}: {one_line(exc)}"]) from exc
        raise
    return db


def _peewee_database(
    url: DatabaseURL, readonly: bool, busy_timeout: float | None, connect_timeout: int
) -> peewee.Database:
    if url.sqlite_file is not None:
        return _sqlite(url.sqlite_file, readonly, busy_timeout)
    if importlib.util.find_spec("psycopg") is None:
        raise ConfigError(["database: a postgresql:// URL needs psycopg (pip install 'metasched[postgres]')"])
    params: dict[str, Any] = dict(url.postgres)
    dbname = params.pop("dbname")
    params.setdefault("connect_timeout", connect_timeout)
    settings = []
    if readonly:
        settings.append("-c default_transaction_read_only=on")
    if busy_timeout is not None:
        ms = int(busy_timeout * 1000)
        settings.append(f"-c lock_timeout={ms} -c statement_timeout={ms}")
    if settings and "options" not in params:
        params["options"] = " ".join(settings)
    return peewee.PostgresqlDatabase(dbname, prefer_psycopg3=True, **params)


def _sqlite(file: Path, readonly: bool, busy_timeout: float | None) -> peewee.SqliteDatabase:
    timeout = BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout
    if readonly:  # no journal_mode change (it needs a write lock) and no writes at all
        return peewee.SqliteDatabase(
            str(file), timeout=timeout, pragmas={"busy_timeout": int(timeout * 1000), "query_only": 1}
        )
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            [f"database: cannot create directory {file.parent}: {exc.strerror or exc}"]
        ) from exc
    create_shareable(file)
    return peewee.SqliteDatabase(
        str(file),
        timeout=timeout,
        pragmas={
            "journal_mode": "wal",
            "busy_timeout": int(timeout * 1000),
            "foreign_keys": 1,
            "synchronous": "normal",
        },
    )


def create_shareable(file: Path) -> None:
    """Create a new database file as 0666 minus the umask, where SQLite would use 0644 minus it.

    The umask is the operator's sharing decision (docs/serve.md: ``UMask=0007`` lets group members such
    as Galaxy's user read the state and write rank's placement ledger); SQLite's 0644 would always deny
    the group write. An empty file is a valid empty database; its -wal/-shm files get the same mode.
    Existing files, and failures (SQLite then reports them when it opens the file), are left alone.
    """
    with suppress(OSError):
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def schema_version(db: Database) -> int:
    version = _stored_version(db)
    return 0 if version is None else version


def prepare(db: Database) -> None:
    """Check the schema version; create or migrate unless read-only."""
    version = _stored_version(db)
    if version == SCHEMA_VERSION:  # the fast path rank takes on every call
        return
    _refuse_newer(db, version)
    if db.readonly:
        found = "no metasched schema" if version is None else f"schema version {version}"
        raise ConfigError(
            [
                f"database: {db.url} has {found}, not {SCHEMA_VERSION}, and is opened read-only "
                "(metasched collect creates or migrates it)"
            ]
        )
    from metasched.store.migrations import postgres_extras, upgrade  # playhouse.migrate: not on rank's path

    with db.write_tx():
        # Re-read inside the write lock: another process may have created or migrated meanwhile.
        version = _stored_version(db)
        _refuse_newer(db, version)
        if version == SCHEMA_VERSION:
            return
        if version is None:
            if db.orm.table_exists(models.Destination._meta.table_name):
                raise ConfigError(
                    [f"database: {db.url} has metasched-like tables but no schema version; refusing"]
                )
            for model in models.MODELS:
                peewee.SchemaManager(model, database=db.orm).create_all(safe=True)
            postgres_extras(db.orm)
            generation.install(db.orm)
            inflight.install(db.orm)
            log.info("created store schema v%d in %s", SCHEMA_VERSION, db.url)
        else:
            upgrade(db.orm, version)
            log.info("migrated store %s from schema v%d to v%d", db.url, version, SCHEMA_VERSION)
        put_setting(db, VERSION_KEY, str(SCHEMA_VERSION))


def _stored_version(db: Database) -> int | None:
    if not db.orm.table_exists(models.Setting._meta.table_name):
        return None
    raw = get_setting(db, VERSION_KEY)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError([f"database: {db.url}: unreadable schema version {raw!r}"]) from None


def _refuse_newer(db: Database, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise ConfigError(
            [
                f"database: {db.url} has schema version {version}, newer than this metasched "
                f"understands ({SCHEMA_VERSION}); upgrade metasched"
            ]
        )
