"""A Store whose rank reads come from memory until what they read changes.

Ranking 50 destinations reads three queries' worth of rows; building and running those queries costs
more than the model itself. What ranking reads only changes when a collect (this process's loop, the
timer's ``metasched collect``, another serve worker's loop) or ``metasched disable`` commits, and
every such commit moves the store's state generation (``metasched.store.generation``: triggers, in
the same transaction). So each reader thread keeps what it read, tagged with that number, and a
cached answer is never older than the database; the placement ledger's writes (one per answered
job, from every serve worker) leave it alone. On SQLite the generation is only read when
``PRAGMA data_version`` (commits by other connections) or the connection's ``total_changes`` (its
own) moved since the last look; on PostgreSQL it is one indexed read per lookup.

``derived`` holds what ranking computes from those reads alone (each destination's observation): a
new dict whenever the generation moves, so a request that read newer rows than its dict was handed
out for writes into a dict nobody is handed again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from metasched.domain.destination import DestinationSummary, MetricRow, ToolTimes
from metasched.store import Store, generation
from metasched.store.database import Database

MAX_ENTRIES = 1024  # per thread; kinds of read (per tool) between two collects
MAX_IDS = 100_000  # per kind: ids asked about, known or not
ABSENT = object()  # an id the store has nothing for
MAX_DERIVED = 8192  # per thread; (destination, tool, second) observations


class _ThreadCache(threading.local):
    version: tuple[int, int] | None = None  # SQLite: (data_version, total_changes) when last checked
    generation: int | None = None  # the store's state generation the entries were read at
    entries: dict[tuple[Any, ...], Any]
    derived: dict[tuple[Any, ...], Any]
    owner: object = None

    def __init__(self) -> None:
        self.entries = {}
        self.derived = {}


class CachingStore(Store):
    """``summaries``/``tool_times``/``metrics``/``typical_run_s`` cached per thread, dropped when
    what they read changed."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._cache = _ThreadCache()

    def _current(self) -> _ThreadCache:
        """This thread's cache, emptied first if the state generation moved."""
        cache = self._cache
        if self.is_postgres:
            now = int(self.db.fetch(generation.SELECT, [])[0][0])
        else:
            # The driver connection directly: peewee's execute_sql costs far more than these reads.
            conn = self.db.connection()
            version = int(conn.execute("PRAGMA data_version").fetchone()[0]), int(conn.total_changes)
            if version == cache.version:
                return cache  # nothing committed anywhere since the last look
            cache.version = version
            now = int(conn.execute(generation.SELECT).fetchone()[0])
        if now != cache.generation:
            cache.entries.clear()
            cache.derived = {}
            cache.generation = now
        return cache

    def derived(self, owner: object) -> dict[tuple[Any, ...], Any]:
        """A per-thread dict for values computed from this store's cached reads and ``owner`` (the
        config), valid until either changes. Take it before the reads it is for."""
        cache = self._current()
        if cache.owner is not owner or len(cache.derived) >= MAX_DERIVED:
            cache.derived = {}
            cache.owner = owner
        return cache.derived

    def _cached(self, key: tuple[Any, ...]) -> tuple[bool, Any]:
        cache = self._current()
        if key in cache.entries:
            return True, cache.entries[key]
        return False, None

    def _keep(self, key: tuple[Any, ...], value: Any) -> None:
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
