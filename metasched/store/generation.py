"""A number that grows whenever what ranking reads changes: the key of serve's read cache.

Ranking reads destination summaries, finished-job history, tool history and the metric cache. Every
other write (rank's own placement ledger above all, one row per answered job) leaves them alone, so a
reader that only watched "has anything been committed" (SQLite's ``data_version``) would drop its
cache on every job another serve worker answers. Database triggers on those four tables add one to
``state_generation.n`` in the writing transaction itself, whoever writes (collect, ``disable``, a
migration, an older or newer metasched), so the number is committed exactly with the change.
"""

from __future__ import annotations

from typing import Any

from peewee import Database, PostgresqlDatabase

TABLE = "state_generation"
WATCHED = ("destination", "finished_job", "tool_history", "metric")
SELECT = f'SELECT "n" FROM "{TABLE}"'  # the one row
_BUMP = f'UPDATE "{TABLE}" SET "n" = "n" + 1'
_PG_FUNCTION = "metasched_state_changed"


def install(db: Database) -> None:
    """Create the counter row and the triggers (idempotent); inside the caller's transaction."""
    handle: Any = db  # peewee leaves execute_sql untyped
    handle.execute_sql(
        f'INSERT INTO "{TABLE}" ("id", "n") SELECT 1, 0 WHERE NOT EXISTS (SELECT 1 FROM "{TABLE}")'
    )
    if isinstance(db, PostgresqlDatabase):
        # One bump per statement: a snapshot replacing thousands of rows costs one row update.
        handle.execute_sql(
            f"CREATE OR REPLACE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
        )
        for table in WATCHED:
            name = f"{table}_state_changed"
            handle.execute_sql(f'DROP TRIGGER IF EXISTS "{name}" ON "{table}"')
            handle.execute_sql(
                f'CREATE TRIGGER "{name}" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "{table}" '
                f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
            )
        return
    for table in WATCHED:  # SQLite has row triggers only
        for event in ("INSERT", "UPDATE", "DELETE"):
            handle.execute_sql(
                f'CREATE TRIGGER IF NOT EXISTS "{table}_{event.lower()}_state_changed" '
                f'AFTER {event} ON "{table}" BEGIN {_BUMP}; END'
            )
