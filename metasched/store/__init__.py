"""The state store: what collect writes and rank/status/serve read. Callers hold a ``Store``
(``store.store``); models stay an implementation detail of this package.

Modules, bottom up: ``url`` (the one database-URL parse), ``convert`` (datetimes to and from the
columns), ``database`` (the peewee handle and its dialect helpers), ``opening`` (SQLite/PostgreSQL
opening, schema creation and migration), ``kv`` (settings), ``snapshots`` and ``history`` (the write
side), ``rank_reads``, ``audit`` (status reads), ``metric_cache``; the placement ledger
(``placements``, ``reconcile``) works on a Store.
"""

from metasched.store.audit import FinishedRecord, RunRecord
from metasched.store.opening import BUSY_TIMEOUT_S
from metasched.store.snapshots import HISTORY_DAYS, MAX_GAP_S, StoreWriteError, WriteResult
from metasched.store.store import Store

__all__ = [
    "BUSY_TIMEOUT_S",
    "HISTORY_DAYS",
    "MAX_GAP_S",
    "FinishedRecord",
    "RunRecord",
    "Store",
    "StoreWriteError",
    "WriteResult",
]
