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
from datetime import datetime
from typing import Any

from metasched.domain.destination import DestinationSummary, MetricRow, PlacementEntry, ToolTimes
from metasched.store import Store, generation, inflight
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
    # The placement ledger's in-flight entries (SQLite): by destination and job, read up to placed_seq,
    # checked again when (data_version, total_changes) moved from placed_version.
    placed: dict[str, dict[str, PlacementEntry]]
    placed_where: dict[str, str]  # job id -> its destination in ``placed``
    # A destination's entries as handed out, oldest first: the same tuple until they change, so
    # ranking may keep what it computed from them (app.observations.Seen.demand).
    placed_lists: dict[str, tuple[PlacementEntry, ...]]
    placed_seq: int | None = None
    placed_version: tuple[int, int] | None = None
    placed_since: datetime | None = None  # entries placed before it were dropped

    def __init__(self) -> None:
        self.entries = {}
        self.derived = {}
        self.placed = {}
        self.placed_where = {}
        self.placed_lists = {}


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

    def inflight_placements(self, dest_ids: Sequence[str], since: datetime) -> list[PlacementEntry]:
        if self.is_postgres:
            return super().inflight_placements(dest_ids, since)
        by_dest = self.inflight_by_destination(dest_ids, since)
        out = [e for dest in dict.fromkeys(dest_ids) for e in by_dest.get(dest, ())]
        out.sort(key=_placed_at)  # as the database orders them
        return out

    def inflight_by_destination(
        self, dest_ids: Sequence[str], since: datetime
    ) -> Mapping[str, Sequence[PlacementEntry]]:
        """SQLite: the ledger's in-flight entries kept per thread and brought up to date with the rows
        written since the last look (``placement.seq``), a row or two per answered job instead of
        every entry of these destinations. PostgreSQL reads them each time (store.inflight)."""
        if self.is_postgres:
            return super().inflight_by_destination(dest_ids, since)
        cache = self._cache
        conn = self.db.connection()
        version = int(conn.execute("PRAGMA data_version").fetchone()[0]), int(conn.total_changes)
        if cache.placed_since is not None and since < cache.placed_since:  # a wider window than before
            cache.placed, cache.placed_where, cache.placed_seq, cache.placed_since = {}, {}, None, None
        if cache.placed_seq is None:
            cache.placed_lists = {}
            seq = inflight.latest_seq(self.db)
            for e in inflight.all_inflight(self.db, seq):
                cache.placed.setdefault(e.destination, {})[e.job_id] = e
                cache.placed_where[e.job_id] = e.destination
            cache.placed_seq = seq
        elif version != cache.placed_version:
            lists = cache.placed_lists
            for seq, job_id, entry in inflight.changed_since(self.db, cache.placed_seq):
                was = cache.placed_where.pop(job_id, None)
                if was is not None:
                    del cache.placed[was][job_id]
                    lists.pop(was, None)
                if entry is not None:
                    cache.placed.setdefault(entry.destination, {})[job_id] = entry
                    cache.placed_where[job_id] = entry.destination
                    lists.pop(entry.destination, None)
                cache.placed_seq = seq
        cache.placed_version = version
        out: dict[str, tuple[PlacementEntry, ...]] = {}
        for dest in dest_ids:
            got = cache.placed_lists.get(dest)
            if got is None:
                jobs = cache.placed.get(dest)
                if not jobs:
                    continue
                got = cache.placed_lists[dest] = tuple(sorted(jobs.values(), key=_placed_at))
            if got[0].placed_at < since:  # out of the window, which only moves on (else: refilled)
                jobs = cache.placed[dest]
                for e in got:
                    if e.placed_at < since:
                        del jobs[e.job_id]
                        del cache.placed_where[e.job_id]
                cache.placed_since = since
                got = tuple(e for e in got if e.placed_at >= since)
                if not got:
                    del cache.placed_lists[dest]
                    continue
                cache.placed_lists[dest] = got
            out[dest] = got
        return out

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


def _placed_at(entry: PlacementEntry) -> datetime:
    return entry.placed_at


def _metric_order(row: MetricRow) -> tuple[str, str, str, str]:
    return (row.source, row.destination_id, row.tool_id, row.name)
