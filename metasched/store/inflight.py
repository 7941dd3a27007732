"""The placement ledger's read side: the in-flight entries rank counts, and what changed since a read.

Every placement row carries ``seq`` (schema v8), moved by database triggers on each insert and
update, whoever writes (rank's ledger, collect's reconciliation): a reader that kept what it read
up to some ``seq`` only reads the rows written since (``changed_since``), a row or two per answered
job, instead of every in-flight entry of its destinations on every request (serve's cache).

On SQLite writers are serialised, so ``seq`` (the table's largest plus one, in the writing
transaction) is committed in its own order: nothing can appear below a ``seq`` already seen. A
PostgreSQL sequence hands numbers out in call order, not commit order, so there it only marks the
row; readers there ask for the in-flight entries each time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from peewee import Database as PeeweeDatabase
from peewee import PostgresqlDatabase

from metasched.domain.destination import PlacementEntry
from metasched.store.convert import aware_from_db
from metasched.store.database import Database

INFLIGHT = "inflight"
COLUMNS = (
    "job_id",
    "destination",
    "tool_id",
    "cores",
    "mem_mb",
    "gpus",
    "placed_at",
    "pred_staging_s",
    "pred_queue_s",
    "pred_run_s",
)
_COLS = ", ".join(f'"{c}"' for c in COLUMNS)
_SELECT_INFLIGHT = (
    f'SELECT {_COLS} FROM "placement" WHERE "state" = \'inflight\' AND "placed_at" >= {{param}} '
    'AND {dest} ORDER BY "placed_at"'
)
_SEQ_INDEX = 'CREATE INDEX IF NOT EXISTS "placement_seq" ON "placement" ("seq")'
_SQLITE_NEXT = (
    'UPDATE "placement" SET "seq" = (SELECT COALESCE(MAX("seq"), 0) + 1 FROM "placement") '
    "WHERE rowid = NEW.rowid"
)
_PG_SEQUENCE = "placement_seq_counter"
_PG_FUNCTION = "metasched_placement_seq"


def _entry(r: Sequence[Any]) -> PlacementEntry | None:
    placed = aware_from_db(r[6])
    if placed is None:
        return None
    return PlacementEntry(r[0], r[1], r[2], r[3], r[4], r[5], placed, r[7], r[8], r[9])


def inflight(db: Database, dest_ids: Sequence[str], since: datetime) -> list[PlacementEntry]:
    """In-flight entries placed at ``since`` or later at any of ``dest_ids``: one query on the
    (state, placed_at) index. ``placed_at`` comes back aware UTC."""
    if not dest_ids:
        return []
    dest_sql, dest_params = db.in_ids('"destination"', list(dest_ids))
    sql = _SELECT_INFLIGHT.format(param=db.param, dest=dest_sql)
    return [e for r in db.fetch(sql, [db.dt_in(since), *dest_params]) if (e := _entry(r)) is not None]


def latest_seq(db: Database) -> int:
    return int(db.fetch('SELECT COALESCE(MAX("seq"), 0) FROM "placement"', [])[0][0])


def all_inflight(db: Database, up_to: int) -> list[PlacementEntry]:
    """Every in-flight entry whose last write is ``up_to`` or older (SQLite: a reader's first fill,
    after ``latest_seq``; later writes come with ``changed_since``)."""
    rows = db.fetch(
        f'SELECT {_COLS} FROM "placement" WHERE "state" = \'inflight\' AND "seq" <= {db.param}', [up_to]
    )
    return [e for r in rows if (e := _entry(r)) is not None]


def changed_since(db: Database, seq: int) -> list[tuple[int, str, PlacementEntry | None]]:
    """(seq, job id, its entry or None when it is no longer in flight) of every row written after
    ``seq``, oldest first."""
    rows = db.fetch(
        f'SELECT "seq", "state", {_COLS} FROM "placement" WHERE "seq" > {db.param} ORDER BY "seq"', [seq]
    )
    return [(int(r[0]), r[2], _entry(r[2:]) if r[1] == INFLIGHT else None) for r in rows]


def install(db: PeeweeDatabase) -> None:
    """The index and the triggers that move ``seq`` (idempotent); inside the caller's transaction."""
    handle: Any = db  # peewee leaves execute_sql untyped
    handle.execute_sql(_SEQ_INDEX)
    if isinstance(db, PostgresqlDatabase):
        handle.execute_sql(f'CREATE SEQUENCE IF NOT EXISTS "{_PG_SEQUENCE}"')
        handle.execute_sql(
            f"CREATE OR REPLACE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN NEW.seq := nextval('{_PG_SEQUENCE}'); RETURN NEW; END $$"
        )
        handle.execute_sql('DROP TRIGGER IF EXISTS "placement_seq" ON "placement"')
        handle.execute_sql(
            'CREATE TRIGGER "placement_seq" BEFORE INSERT OR UPDATE ON "placement" '
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
        return
    # The update's own write changes seq, so WHEN keeps it from firing itself (recursive_triggers).
    handle.execute_sql(
        'CREATE TRIGGER IF NOT EXISTS "placement_insert_seq" AFTER INSERT ON "placement" '
        f"BEGIN {_SQLITE_NEXT}; END"
    )
    handle.execute_sql(
        'CREATE TRIGGER IF NOT EXISTS "placement_update_seq" AFTER UPDATE ON "placement" '
        f'WHEN NEW."seq" IS OLD."seq" BEGIN {_SQLITE_NEXT}; END'
    )
