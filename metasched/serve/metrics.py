"""The /metrics page: metric families built on each scrape, written by ``prometheus_client``.

Destination series come from the store (so they are right whichever process collected, this one's
loop or the timer's ``metasched collect``); request and collect-cycle counters are this service's own
(with ``serve.workers`` > 1, summed over the workers: serve.peers).
Each page is rendered from a fresh registry holding one collector for that scrape's families, so
nothing is registered in prometheus_client's process-wide default registry.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from metasched.domain.destination import DestinationSummary
from metasched.store import RunRecord, Store
from metasched.store.reconcile import Calibration

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0


class RequestSnapshot(msgspec.Struct, frozen=True):
    """RequestStats' figures as plain data, for the other worker processes (serve.peers)."""

    counts: list[tuple[str, str, str, int]]  # (path, method, code, answers)
    latency: list[tuple[str, list[int], float]]  # (path, count per LATENCY_BUCKETS bucket, seconds)


class RequestStats:
    """Request counts by (path, method, status) and latency histograms by path; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, _Histogram] = {}

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (path, method, str(status))
            self._counts[key] = self._counts.get(key, 0) + 1
            hist = self._latency.get(path)
            if hist is None:
                hist = self._latency[path] = _Histogram()
            hist.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            hist.total += seconds

    def snapshot(self) -> RequestSnapshot:
        with self._lock:
            return RequestSnapshot(
                [(*key, n) for key, n in self._counts.items()],
                [(p, list(h.counts), h.total) for p, h in self._latency.items()],
            )

    def families(self, peers: Sequence[RequestSnapshot] = ()) -> list[Metric]:
        """This process's figures plus the other workers' (``peers``), summed."""
        merged: dict[tuple[str, str, str], int] = {}
        hists: dict[str, tuple[list[int], float]] = {}
        for snap in (self.snapshot(), *peers):
            for path, method, code, n in snap.counts:
                merged[(path, method, code)] = merged.get((path, method, code), 0) + n
            for path, buckets, total in snap.latency:
                have = hists.get(path)
                if have is None:
                    hists[path] = (list(buckets), total)
                else:
                    hists[path] = ([a + b for a, b in zip(have[0], buckets, strict=True)], have[1] + total)
        counts = sorted(merged.items())
        latency = sorted((p, b, t) for p, (b, t) in hists.items())
        requests = CounterMetricFamily(
            "metasched_http_requests_total",
            "HTTP requests answered, by endpoint, method and status.",
            labels=["path", "method", "code"],
        )
        for (path, method, code), n in counts:
            requests.add_metric([path, method, code], n)
        duration = HistogramMetricFamily(
            "metasched_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint.",
            labels=["path"],
        )
        for path, buckets, total in latency:
            running, cumulative = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                running += n
                cumulative.append((_le(bound), running))
            duration.add_metric([path], cumulative, sum_value=total)
        return [requests, duration]


@dataclass(frozen=True, slots=True)
class LoopStats:
    """What the collect loop of this process has done (see loop.CollectLoop.stats)."""

    cycles: Mapping[str, int]  # result -> count (ok, partial, failed, skipped)
    last_cycle_end: datetime | None
    alive: bool


class RunTally:
    """Failed collect attempts per destination, counted from the store's collect-run records.

    The records are read newest first, only as far back as the last update saw, so a scrape costs one
    small query however long the history (it holds one row per destination per collect for
    ``collect.history_days``). The first update counts the newest FIRST_READ records. Collects never
    overlap (the collect lock), so one run's records are adjacent and a destination's start times
    only grow: a record is new when it started after the newest one counted for its destination.
    """

    FIRST_READ = 10_000
    BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._primed = False
        self._errors: dict[str, int] = {}
        self._latest: dict[str, RunRecord] = {}

    def update(self, store: Store) -> None:
        with self._lock:
            rows = store.runs(limit=self._reach(store))
            for r in reversed(rows):
                seen = self._latest.get(r.destination_id)
                if seen is not None and r.started <= seen.started:
                    continue
                self._latest[r.destination_id] = r
                if not r.ok:
                    self._errors[r.destination_id] = self._errors.get(r.destination_id, 0) + 1
            self._primed = True

    def _reach(self, store: Store) -> int:
        """How many newest records cover everything new: up to the first run counted before."""
        if not self._primed:
            return self.FIRST_READ
        n = self.BATCH
        while n < self.FIRST_READ:
            rows = store.runs(limit=n)
            counted = next((r for r in rows if self._counted(r)), None)
            if len(rows) < n or (counted is not None and rows[-1].run_id != counted.run_id):
                return n
            n *= 4
        return n

    def _counted(self, r: RunRecord) -> bool:
        seen = self._latest.get(r.destination_id)
        return seen is not None and r.started <= seen.started

    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def latest(self) -> dict[str, RunRecord]:
        with self._lock:
            return dict(self._latest)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus spells it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Page(Collector):
    """One scrape's families, already built."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def render(
    summaries: Sequence[DestinationSummary],
    last_runs: Mapping[str, RunRecord],
    errors: Mapping[str, int],
    loop: LoopStats,
    requests: RequestStats,
    now: datetime,
    *,
    store_up: bool = True,
    ledger: Mapping[str, Calibration] | None = None,
    peers: Sequence[RequestSnapshot] = (),
) -> str:
    """The whole /metrics page. ``ledger``: the placement ledger's figures per destination; ``peers``:
    the other workers' request figures."""
    families: list[Metric] = []

    def series(
        name: str, help_text: str, values: Iterable[tuple[Mapping[str, str], float]], kind: str = "gauge"
    ) -> None:
        samples = list(values)
        names = list(samples[0][0]) if samples else []
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
            name, help_text, labels=names
        )
        for labels, value in samples:
            family.add_metric([labels[k] for k in names], value)
        families.append(family)

    def per_dest(name: str, help_text: str, pick: Callable[[DestinationSummary], float]) -> None:
        series(name, help_text, (({"destination": s.id}, float(pick(s))) for s in summaries))

    per_dest("metasched_destination_up", "1 when the last collect attempt succeeded.", lambda s: s.reachable)
    series(
        "metasched_destination_last_success_timestamp_seconds",
        "Unix time of the last successful collect.",
        (({"destination": s.id}, s.last_success.timestamp()) for s in summaries if s.last_success),
    )
    series(
        "metasched_destination_last_collect_duration_seconds",
        "Duration of the destination's last collect attempt (any collecting process).",
        (({"destination": d}, r.duration_s) for d, r in sorted(last_runs.items())),
    )
    series(
        "metasched_destination_collect_errors_total",
        "Failed collect attempts recorded in the store (by any collecting process) since serve started.",
        (({"destination": s.id}, float(errors.get(s.id, 0))) for s in summaries),
        "counter",
    )
    per_dest(
        "metasched_destination_disabled",
        "1 while an operator has disabled the destination (metasched disable).",
        lambda s: s.disabled_reason is not None and (s.disabled_until is None or s.disabled_until > now),
    )
    for what, unit, factor in (("cores", "", 1), ("memory", "_bytes", 1024 * 1024), ("gpus", "", 1)):
        attr = "mem" if what == "memory" else what
        unit_suffix = "_mb" if what == "memory" else ""
        for state in ("free", "total"):
            series(
                f"metasched_destination_{what}_{state}{unit}",
                f"{what.capitalize()} {state} on available nodes at the last successful collect.",
                (
                    ({"destination": s.id}, float(getattr(s, f"{attr}_{state}{unit_suffix}")) * factor)
                    for s in summaries
                ),
            )
    per_dest(
        "metasched_destination_nodes_total", "Nodes at the last successful collect.", lambda s: s.nodes_total
    )
    per_dest(
        "metasched_destination_nodes_unavailable",
        "Nodes down, drained or otherwise unavailable.",
        lambda s: s.nodes_unavailable,
    )
    series(
        "metasched_destination_jobs",
        "Jobs at the last successful collect, by state (queued: pending and not held).",
        (
            ({"destination": s.id, "state": state}, float(n))
            for s in summaries
            for state, n in (("running", s.jobs_running), ("queued", s.jobs_queued), ("held", s.jobs_held))
        ),
    )
    cal = sorted((ledger or {}).items())
    series(
        "metasched_ledger_inflight_placements",
        "Placements rank recorded that no destination's jobs showed yet.",
        (({"destination": d}, float(c.inflight)) for d, c in cal),
    )
    series(
        "metasched_ledger_inflight_cores",
        "Cores of those in-flight placements.",
        (({"destination": d}, c.inflight_cores) for d, c in cal),
    )
    series(
        "metasched_ledger_expired_placements",
        "Placements never seen within rank.ledger_ttl, kept for collect.history_days.",
        (({"destination": d}, float(c.expired)) for d, c in cal),
    )
    series(
        "metasched_ledger_prediction_jobs",
        "Finished placements behind the prediction error (the newest, at most 50).",
        (({"destination": d}, float(c.jobs)) for d, c in cal),
    )
    series(
        "metasched_ledger_prediction_error",
        "Median |ln(predicted/actual)| of queue wait and of run time (both at least 1 s; 0 is exact).",
        (
            ({"destination": d, "what": what}, value)
            for d, c in cal
            for what, value in (("queue_wait", c.queue_error), ("run_time", c.run_error))
            if value is not None
        ),
    )
    series(
        "metasched_collect_cycles_total",
        "Collect cycles of this process's loop, by result (skipped: another collect held the lock).",
        (({"result": r}, float(n)) for r, n in sorted(loop.cycles.items())),
        "counter",
    )
    series(
        "metasched_store_up", "1 when the state store could be read for this page.", [({}, float(store_up))]
    )
    series(
        "metasched_collect_loop_up",
        "1 while the collect loop runs and its last cycle did not fail.",
        [({}, 1.0 if loop.alive else 0.0)],
    )
    if loop.last_cycle_end is not None:
        series(
            "metasched_collect_last_cycle_timestamp_seconds",
            "Unix time the last collect cycle of this process ended.",
            [({}, loop.last_cycle_end.timestamp())],
        )
    families.extend(requests.families(peers))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Page(families))
    return generate_latest(registry).decode()
