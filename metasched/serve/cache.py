"""A Store whose rank reads come from memory until the database changes.

Ranking 50 destinations reads three queries' worth of rows; building and running those queries costs
more than the model itself. State only changes when a collect (this process's loop, the timer's
``metasched collect``, ``metasched disable``) commits, so each reader thread keeps what it read,
tagged with SQLite's ``PRAGMA data_version``: that number changes exactly when another connection has
committed, so a cached answer is never older than the database. Writes through this store's own
connection (the collect loop, an API write) do not change it, so the connection's ``total_changes``
is part of the tag too. PostgreSQL has no such cheap probe: there every read goes to the database.

``derived`` holds what ranking computes from those reads alone (each destination's observation): a
new dict whenever the database changes, so a request that read newer rows than its dict was handed
out for writes into a dict nobody is handed again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from metasched.domain.destination import DestinationSummary, MetricRow, ToolTimes
from metasched.store import Store
from metasched.store.database import Database

MAX_ENTRIES = 1024  # per thread; kinds of read (per tool) between two collects
MAX_IDS = 100_000  # per kind: ids asked about, known or not
ABSENT = object()  # an id the store has nothing for
MAX_DERIVED = 8192  # per thread; (destination, tool, second) observations


class _ThreadCache(threading.local):
    version: tuple[int, int] | None = None
    entries: dict[tuple[Any, ...], Any]
    derived: dict[tuple[Any, ...], Any]
    owner: object = None

    def __init__(self) -> None:
        self.entries = {}
        self.derived = {}


class CachingStore(Store):
    """``summaries``/``tool_times``/``metrics``/``typical_run_s`` cached per thread, dropped when the
    database changed."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._cache = _ThreadCache()

    def _data_version(self) -> tuple[int, int] | None:
        """(commits by other connections, rows changed by this one) as seen by this thread's connection."""
        if self.is_postgres:
            return None
        # The driver connection directly: peewee's execute_sql costs far more than the pragma itself.
        conn = self.db.connection()
        row = conn.execute("PRAGMA data_version").fetchone()
        return int(row[0]), int(conn.total_changes)

    @contextmanager
    def cache_neutral_write(self) -> Iterator[None]:
        """A placement-ledger write changes nothing cached here: keep the caches across it, unless
        another connection committed meanwhile (its data_version moved)."""
        before = self._data_version()
        yield
        if before is not None and before == self._cache.version:
            after = self._data_version()
            if after is not None and after[0] == before[0]:
                self._cache.version = after

    def _current(self) -> _ThreadCache | None:
        """This thread's cache, emptied first if the database changed; None on PostgreSQL."""
        version = self._data_version()
        if version is None:
            return None
        cache = self._cache
        if version != cache.version:
            cache.entries.clear()
            cache.derived = {}
            cache.version = version
        return cache

    def derived(self, owner: object) -> dict[tuple[Any, ...], Any] | None:
        """A per-thread dict for values computed from this store's cached reads and ``owner`` (the
        config), valid until either changes; None where nothing is cached (PostgreSQL). Take it
        before the reads it is for."""
        cache = self._current()
        if cache is None:
            return None
        if cache.owner is not owner or len(cache.derived) >= MAX_DERIVED:
            cache.derived = {}
            cache.owner = owner
        return cache.derived

    def _cached(self, key: tuple[Any, ...]) -> tuple[bool, Any]:
        cache = self._current()
        if cache is None:
            return False, None
        if key in cache.entries:
            return True, cache.entries[key]
        return False, None

    def _keep(self, key: tuple[Any, ...], value: Any) -> None:
        if self.is_postgres:
            return
        entries = self._cache.entries
        if len(entries) >= MAX_ENTRIES:
            entries.clear()
        entries[key] = value

    def _by_id(
        self, kind: tuple[Any, ...], ids: Sequence[str], fetch: Callable[[list[str]], Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        """Each id's value (ABSENT: none) for ``kind``, reading only the ids not cached yet: after a
        collect, the first request reads its destinations and the next ones only those it did not ask."""
        wanted = list(dict.fromkeys(ids))
        cache = self._current()
        if cache is None:  # PostgreSQL
            got = fetch(wanted)
            return {i: got.get(i, ABSENT) for i in wanted}
        table = cache.entries.get(kind)
        if table is None or len(table) > MAX_IDS:
            if len(cache.entries) >= MAX_ENTRIES:
                cache.entries.clear()
            table = cache.entries[kind] = {}
        missing = [i for i in wanted if i not in table]
        if missing:
            got = fetch(missing)
            for i in missing:
                table[i] = got.get(i, ABSENT)
        return table

    def summaries(self, ids: Sequence[str] | None = None) -> list[DestinationSummary]:
        if ids is None:
            hit, value = self._cached(("summaries", None))
            if not hit:
                value = super().summaries()
                self._keep(("summaries", None), value)
            return list(value)
        found = self._by_id(("summaries",), ids, lambda w: {s.id: s for s in Store.summaries(self, w)})
        return [v for v in (found.get(i, ABSENT) for i in dict.fromkeys(ids)) if v is not ABSENT]

    def tool_times(self, tool_id: str, dest_ids: Sequence[str], limit: int = 200) -> dict[str, ToolTimes]:
        found = self._by_id(
            ("tool_times", tool_id, limit), dest_ids, lambda w: Store.tool_times(self, tool_id, w, limit)
        )
        return {i: v for i in dict.fromkeys(dest_ids) if (v := found[i]) is not ABSENT}

    def metrics(self, dest_ids: Sequence[str], tool_id: str | None = None) -> list[MetricRow]:
        def fetch(wanted: list[str]) -> dict[str, list[MetricRow]]:
            rows: dict[str, list[MetricRow]] = {i: [] for i in wanted}
            for row in Store.metrics(self, wanted, tool_id):
                rows[row.destination_id].append(row)
            return rows

        found = self._by_id(("metrics", tool_id), dest_ids, fetch)
        out = [row for i in dict.fromkeys(dest_ids) for row in found.get(i, ())]
        out.sort(key=_metric_order)  # the store's own order
        return out

    def typical_run_s(self, dest_ids: Sequence[str]) -> dict[str, float]:
        found = self._by_id(("typical_run_s",), dest_ids, lambda w: Store.typical_run_s(self, w))
        return {i: v for i in dict.fromkeys(dest_ids) if (v := found[i]) is not ABSENT}


def _metric_order(row: MetricRow) -> tuple[str, str, str, str]:
    return (row.source, row.destination_id, row.tool_id, row.name)
