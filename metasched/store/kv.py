"""The ``setting`` table: small key/value state (schema version, the ledger's watermark, policies)."""

from __future__ import annotations

from metasched.store import models
from metasched.store.database import Database


def get_setting(db: Database, key: str) -> str | None:
    S = models.Setting
    value = db.scalar(S.select(S.value).where(S.key == key))
    return None if value is None else str(value)


def set_setting(db: Database, key: str, value: str | None) -> None:
    """``None`` removes the setting. One write transaction of its own."""
    with db.write_tx():
        if value is None:
            db.bind(models.Setting.delete().where(models.Setting.key == key)).execute()
        else:
            put_setting(db, key, value)


def put_setting(db: Database, key: str, value: str) -> None:
    """Insert or replace, inside the caller's write transaction."""
    S = models.Setting
    db.bind(
        S.insert(key=key, value=value).on_conflict(conflict_target=[S.key], update={S.value: value})
    ).execute()
