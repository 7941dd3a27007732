"""Schema migrations: one step per version, applied in order when a store opens an older database.

``STEPS[n]`` upgrades a database from version ``n`` to ``n + 1``. Steps name tables and columns
literally (frozen), instead of reading the current models, so a step still means the same thing
after the models move on. The Store runs every pending step and the version bump in one
transaction (SQLite and PostgreSQL both have transactional DDL), so a failed or interrupted
migration leaves the old schema intact.

To change the schema: edit ``models.py``, bump ``SCHEMA_VERSION``, add ``STEPS[old]`` here, and
extend the migration test with a database of the old shape.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import groupby, islice
from operator import itemgetter
from typing import Any

from peewee import Database, PostgresqlDatabase
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator, SqliteMigrator, migrate

from metasched.domain.errors import MetaschedError
from metasched.store import generation, inflight
from metasched.store.models import SCHEMA_VERSION
from metasched.store.samples import SAMPLES, end_seconds, pack

Step = Callable[[Database], None]


class MigrationError(MetaschedError):
    """The database cannot be brought to the schema this metasched knows."""


def _execute(db: Database, sql: str) -> None:
    handle: Any = db  # peewee leaves execute_sql untyped
    handle.execute_sql(sql)


def migrator_for(db: Database) -> SchemaMigrator:
    return PostgresqlMigrator(db) if isinstance(db, PostgresqlDatabase) else SqliteMigrator(db)


_FINISHED_JOB_TOOL_KEY_C = (
    'CREATE INDEX IF NOT EXISTS "finished_job_tool_key_c" ON "finished_job" '
    '("tool_key" COLLATE "C", "destination_id", "end_time")'
)
_TOOL_HISTORY_TOOL_KEY_C = (
    'CREATE INDEX IF NOT EXISTS "tool_history_tool_key_c" ON "tool_history" '
    '("tool_key" COLLATE "C", "destination_id")'
)


def postgres_extras(db: Database) -> None:
    """Objects the models cannot declare portably: on PostgreSQL, tool_key range lookups need byte order.

    ``Store.tool_times`` matches ``tool_key = k OR k_ <= tool_key < k```, which is only a prefix test
    under byte-wise ("C") collation; a site's linguistic default collation does not (glibc en_US
    ignores ``_``, ICU en-US puts ``Cat1_u`` inside the range). The queries use ``COLLATE "C"`` and
    these indexes serve them. SQLite compares bytes already.
    """
    if isinstance(db, PostgresqlDatabase):
        _execute(db, _FINISHED_JOB_TOOL_KEY_C)
        _execute(db, _TOOL_HISTORY_TOOL_KEY_C)


def _v1_to_v2(db: Database) -> None:
    """History keeps the partition; pruning uses indexes instead of scans; redundant indexes go."""
    # One ALTER with a DDL default (valid on both backends); the migrator's NOT NULL path would
    # rebuild the whole history table on SQLite.
    _execute(db, """ALTER TABLE "finished_job" ADD COLUMN "partition" VARCHAR(255) NOT NULL DEFAULT ''""")
    # Single-column indexes that composite indexes starting with the same column make redundant:
    # each one costs time on every 100k-row snapshot replace.
    for index in (
        "node_destination_id",
        "partition_destination_id",
        "job_destination_id",
        "finished_job_tool_key",
        "collect_run_destination_id",
    ):
        _execute(db, f'DROP INDEX IF EXISTS "{index}"')
    m = migrator_for(db)
    migrate(
        m.add_index("finished_job", ("destination_id", "end_time"), False),
        m.add_index("collect_run", ("destination_id", "started"), False),
    )
    if isinstance(db, PostgresqlDatabase):
        _execute(db, _FINISHED_JOB_TOOL_KEY_C)


def _v2_to_v3(db: Database) -> None:
    """Largest available node per destination (rank's per-node feasibility); covering tool_key index."""
    for column in ("max_node_cores", "max_node_mem_mb", "max_node_gpus"):
        _execute(db, f'ALTER TABLE "destination" ADD COLUMN "{column}" INTEGER')
    # Filled from the stored snapshot, so a fresh summary does not read as "largest node unknown"
    # until the next collect. MAX over no available node is NULL, as write_snapshot stores it.
    _execute(
        db,
        'UPDATE "destination" SET '
        + ", ".join(
            f'"max_node_{name}" = (SELECT MAX("node"."{column}") FROM "node" '
            'WHERE "node"."destination_id" = "destination"."id" AND "node"."available")'
            for name, column in (("cores", "cores_total"), ("mem_mb", "mem_total_mb"), ("gpus", "gpus_total"))
        ),
    )
    _execute(db, 'DROP INDEX IF EXISTS "finished_job_tool_key_destination_id_end_time"')
    m = migrator_for(db)
    migrate(
        m.add_index("finished_job", ("tool_key", "destination_id", "end_time", "queue_s", "run_s"), False)
    )


def _v3_to_v4(db: Database) -> None:
    """Per-(destination, tool_key) samples of the newest finished jobs (rank's per-tool read)."""
    pg = isinstance(db, PostgresqlDatabase)
    _execute(
        db,
        f'CREATE TABLE "tool_history" ("id" {"SERIAL" if pg else "INTEGER"} NOT NULL PRIMARY KEY, '
        '"destination_id" VARCHAR(255) NOT NULL, "tool_key" VARCHAR(255) NOT NULL, '
        f'"oldest_end" {"TIMESTAMP" if pg else "DATETIME"} NOT NULL, '
        f'"samples" {"BYTEA" if pg else "BLOB"} NOT NULL)',
    )
    _execute(
        db,
        'CREATE UNIQUE INDEX "tool_history_tool_key_destination_id" ON "tool_history" '
        '("tool_key", "destination_id")',
    )
    if pg:
        _execute(db, _TOOL_HISTORY_TOOL_KEY_C)
    _fill_tool_history(db)


def _fill_tool_history(db: Database) -> None:
    """One tool_history row per (destination, tool_key) of the existing history (format v4, frozen)."""
    handle: Any = db
    cursor = handle.execute_sql(
        'SELECT "destination_id", "tool_key", "end_time", "id", "queue_s", "run_s" FROM "finished_job" '
        'WHERE "tool_key" IS NOT NULL ORDER BY "destination_id", "tool_key", "end_time" DESC, "id" DESC'
    )
    p = handle.param
    insert = (
        'INSERT INTO "tool_history" ("destination_id", "tool_key", "oldest_end", "samples") '
        f"VALUES ({p}, {p}, {p}, {p})"
    )
    for (dest, key), group in groupby(cursor.fetchall(), key=itemgetter(0, 1)):
        rows = list(islice(group, SAMPLES))
        ends = [_naive(r[2]) for r in rows]
        blob = pack((end_seconds(e), float(r[3]), r[4], r[5]) for e, r in zip(ends, rows, strict=True))
        oldest = ends[-1] if isinstance(db, PostgresqlDatabase) else str(ends[-1])
        handle.execute_sql(insert, (dest, key, oldest, blob))


def _naive(value: Any) -> datetime:
    """A stored end time (SQLite text, PostgreSQL naive datetime) as a naive UTC datetime."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _v4_to_v5(db: Database) -> None:
    """The placement ledger: where rank sent each Galaxy job and what it predicted (starts empty)."""
    ts = "TIMESTAMP" if isinstance(db, PostgresqlDatabase) else "DATETIME"
    _execute(
        db,
        'CREATE TABLE "placement" ("job_id" VARCHAR(255) NOT NULL PRIMARY KEY, '
        '"destination" VARCHAR(255) NOT NULL, "tool_id" VARCHAR(255) NOT NULL, '
        '"cores" REAL NOT NULL, "mem_mb" REAL NOT NULL, "gpus" REAL NOT NULL, '
        f'"placed_at" {ts} NOT NULL, "pred_staging_s" REAL NOT NULL, "pred_queue_s" REAL NOT NULL, '
        '"pred_run_s" REAL NOT NULL, "state" VARCHAR(255) NOT NULL DEFAULT \'inflight\', '
        f'"resolved_at" {ts}, "actual_destination" VARCHAR(255), "actual_queue_s" REAL, '
        f'"actual_run_s" REAL, "finished_at" {ts})',
    )
    _execute(db, 'CREATE INDEX "placement_state_placed_at" ON "placement" ("state", "placed_at")')
    _execute(
        db,
        'CREATE INDEX "placement_actual_destination_finished_at" ON "placement" '
        '("actual_destination", "finished_at")',
    )


def _v5_to_v6(db: Database) -> None:
    """The scheduler's expected start per pending job, and its summary per destination (rank's read).

    Nothing to fill: stored snapshots carry no estimates, the next collect brings them.
    """
    ts = "TIMESTAMP" if isinstance(db, PostgresqlDatabase) else "DATETIME"
    _execute(db, f'ALTER TABLE "job" ADD COLUMN "start_estimate" {ts}')
    _execute(db, f'ALTER TABLE "job" ADD COLUMN "estimated_at" {ts}')
    _execute(db, 'ALTER TABLE "destination" ADD COLUMN "start_estimates" TEXT')


def _v6_to_v7(db: Database) -> None:
    """The state generation: one counter row, and the triggers that move it (store.generation)."""
    _execute(db, 'CREATE TABLE "state_generation" ("id" INTEGER NOT NULL PRIMARY KEY, "n" INTEGER NOT NULL)')
    generation.install(db)


def _v7_to_v8(db: Database) -> None:
    """placement.seq and the triggers that move it (store.inflight); rows from before start at 0."""
    _execute(db, 'ALTER TABLE "placement" ADD COLUMN "seq" BIGINT NOT NULL DEFAULT 0')
    inflight.install(db)


STEPS: dict[int, Step] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
    6: _v6_to_v7,
    7: _v7_to_v8,
}


def upgrade(db: Database, from_version: int, to_version: int = SCHEMA_VERSION) -> list[int]:
    """Apply every step from ``from_version`` up to ``to_version``; return the versions reached.

    The caller owns the transaction and records the new version in the same one.
    """
    if from_version > to_version:
        raise MigrationError(f"cannot downgrade schema version {from_version} to {to_version}")
    reached: list[int] = []
    for version in range(from_version, to_version):
        step = STEPS.get(version)
        if step is None:
            raise MigrationError(f"no migration from schema version {version} to {version + 1}")
        step(db)
        reached.append(version + 1)
    return reached
