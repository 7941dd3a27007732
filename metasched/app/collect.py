"""One collect cycle: every enabled destination's adapter over its transport, the snapshots stored,
the placement ledger settled, enforcement for ``enforce: true`` groups, and InfluxDB metrics refreshed.

Destinations are collected concurrently, each stored (or its failure recorded) alone: one that fails
never stops the others and never touches its previous snapshot. One worker per host (destinations
sharing an SSH login share one connection, collected in turn; ``host: local`` ones run alone) only
talks to the clusters; the calling thread does every store write, in completion order, so the
database sees one writer per run. A run holds the collect lock (``app.lock``) for its whole duration,
so a slow timer tick and the next one cannot interleave.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from metasched.app.lock import CollectLock, lock_path
from metasched.app.metrics import pull_metrics, write_summary
from metasched.domain.errors import CollectError, ExitCode
from metasched.domain.jobs import Snapshot
from metasched.domain.ports import Adapter
from metasched.policy.enforce import Report, Wiring, enforce
from metasched.schedulers.registry import make_adapter
from metasched.settings import Config, DestinationConfig
from metasched.store import Store
from metasched.store.reconcile import ReconcileResult, reconcile
from metasched.transport import connection_key, open_transport
from metasched.transport.base import Transport

log = logging.getLogger("metasched.collect")
enforce_log = logging.getLogger("metasched.enforce")  # enforcement's own log, as `metasched enforce` has it

# The real adapters and transports behind enforcement's port (tests wire stand-ins the same way).
WIRING = Wiring(adapter_for=make_adapter, connect=open_transport)


@dataclass(slots=True)
class DestinationResult:
    id: str
    scheduler: str
    host: str
    ok: bool
    error: str | None
    duration_s: float
    jobs: int = 0
    nodes: int = 0
    finished_jobs: int = 0  # jobs this run moved into finished-job history


@dataclass(slots=True)
class CollectReport:
    run_id: str
    started: datetime
    finished: datetime
    results: list[DestinationResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # metrics problems: shown, but not a failure
    ledger: ReconcileResult | None = None  # placement ledger reconciliation (None: it failed)

    @property
    def ok_count(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed_count(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.PARTIAL if self.failed_count else ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``collect --json``): ISO 8601 UTC times, counts, one object per destination."""
        return {
            "run_id": self.run_id,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "duration_s": round((self.finished - self.started).total_seconds(), 3),
            "ok": self.ok_count,
            "failed": self.failed_count,
            "exit_code": int(self.exit_code),
            "warnings": list(self.warnings),
            "ledger": asdict(self.ledger) if self.ledger is not None else None,
            "destinations": [asdict(r) for r in self.results],
        }


@dataclass(slots=True)
class _Outcome:
    dest: DestinationConfig
    snapshot: Snapshot | None
    error: str | None
    started: float  # time.monotonic()
    finished: float


def _collect_host(dests: Sequence[DestinationConfig], emit: Callable[[_Outcome], None]) -> None:
    """Connect once to the destinations' shared host, collect each in turn; never raises.

    Each destination gets exactly one outcome (passed to ``emit`` as soon as it is known), its own
    env and command_timeout; a connection failure is every destination's error.
    """
    started = time.monotonic()
    pending: list[tuple[DestinationConfig, Adapter]] = []
    for dest in dests:  # an unsupported scheduler is that destination's error, before any connection
        try:
            pending.append((dest, make_adapter(dest)))
        except Exception as exc:
            emit(_Outcome(dest, None, _error_text(exc, dest), started, time.monotonic()))
    try:
        if not pending:
            return
        try:
            transport = open_transport(pending[0][0])
        except Exception as exc:
            error = _error_text(exc, pending[0][0])
            for dest, _ in pending:
                emit(_Outcome(dest, None, error, started, time.monotonic()))
            pending.clear()
            return
        try:
            while pending:
                dest, adapter = pending[0]
                emit(_collect_one(dest, adapter, transport, started))
                pending.pop(0)
                started = time.monotonic()
        finally:
            with contextlib.suppress(Exception):  # closing a dead connection must not lose results
                transport.close()
    finally:
        for dest, _ in pending:  # only on a bug above: the caller waits for one outcome each
            emit(_Outcome(dest, None, "unexpected error: not collected", started, time.monotonic()))


def _collect_one(dest: DestinationConfig, adapter: Adapter, transport: Transport, started: float) -> _Outcome:
    """Run one destination's adapter over an open transport; never raises."""
    snapshot: Snapshot | None = None
    error: str | None = None
    try:
        snapshot = adapter.collect(transport.for_destination(dest))
    except Exception as exc:
        error = _error_text(exc, dest)
    return _Outcome(dest, snapshot, error, started, time.monotonic())


def _error_text(exc: Exception, dest: DestinationConfig) -> str:
    if isinstance(exc, CollectError):
        return _one_line(str(exc)) or type(exc).__name__
    # a parser bug on odd output must not take the other destinations down
    log.debug("destination %s: unexpected error", dest.id, exc_info=True)
    return f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"


def _by_connection(dests: Sequence[DestinationConfig]) -> list[list[DestinationConfig]]:
    """Destinations grouped by shared SSH login (config order kept); each ``host: local`` alone."""
    groups: dict[object, list[DestinationConfig]] = {}
    for i, dest in enumerate(dests):
        key = connection_key(dest)
        groups.setdefault(("local", i) if key is None else key, []).append(dest)
    return list(groups.values())


def _one_line(text: str) -> str:
    return " ".join(text.split())


def collect_all(
    config: Config,
    store: Store,
    *,
    now: datetime | None = None,
    on_progress: Callable[[DestinationResult], None] | None = None,
    lock: bool = True,
) -> CollectReport:
    """Collect every enabled destination and store what was learned; the report says what happened.

    ``now`` anchors the run's timestamps (default: the current time). ``on_progress`` is called in the
    calling thread once per destination as it completes. ``lock`` False skips the collect lock for a
    caller that already holds it. Raises CollectAlreadyRunning when another collect holds the lock
    past ``config.collect.lock_timeout``.
    """
    guard: contextlib.AbstractContextManager[Any] = (
        CollectLock(lock_path(store.url), config.collect.lock_timeout) if lock else contextlib.nullcontext()
    )
    with guard:
        return _run(config, store, now, on_progress)


def _run(
    config: Config,
    store: Store,
    now: datetime | None,
    on_progress: Callable[[DestinationResult], None] | None,
) -> CollectReport:
    base = now or datetime.now(UTC)
    t0 = time.monotonic()

    def at(mono: float) -> datetime:
        return base + timedelta(seconds=mono - t0)

    run_id = uuid.uuid4().hex
    report = CollectReport(run_id=run_id, started=base, finished=base)
    store.sync_destinations((d.id, d.scheduler, d.host) for d in config.destinations)
    enabled = [d for d in config.destinations if d.enabled]
    if enabled:
        groups = _by_connection(enabled)
        workers = max(1, min(config.collect.fanout, len(groups)))
        outcomes: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect") as pool:
            for group in groups:
                pool.submit(_collect_host, group, outcomes.put)
            for _ in enabled:  # _collect_host emits exactly one outcome per destination
                result = _store_outcome(store, config, outcomes.get(), run_id, at)
                _log_result(result)
                report.results.append(result)
                if on_progress is not None:
                    on_progress(result)
    order = {d.id: i for i, d in enumerate(enabled)}
    report.results.sort(key=lambda r: order[r.id])
    report.ledger = _reconcile(config, store, at(time.monotonic()), report.warnings)
    if report.ok_count and any(p.enforce for p in config.policies):  # opt-in renice (docs/policies.md)
        report.warnings.extend(_enforce_after_collect(config, store))
    if config.influxdb is not None:
        report.warnings.extend(_metrics(config, store, base))
    report.finished = at(time.monotonic())
    return report


def _store_outcome(
    store: Store,
    config: Config,
    outcome: _Outcome,
    run_id: str,
    at: Callable[[float], datetime],
) -> DestinationResult:
    dest = outcome.dest
    started, finished = at(outcome.started), at(outcome.finished)
    result = DestinationResult(
        id=dest.id,
        scheduler=dest.scheduler,
        host=dest.host,
        ok=False,
        error=outcome.error,
        duration_s=round(outcome.finished - outcome.started, 3),
    )
    if outcome.snapshot is not None:
        snap = outcome.snapshot
        try:
            written = store.write_snapshot(
                dest.id,
                snap,
                run_id=run_id,
                started=started,
                finished=finished,
                history_days=config.collect.history_days,
            )
        except CollectError as exc:  # e.g. the store refused inconsistent output (duplicate ids)
            result.error = _one_line(str(exc))
        else:
            result.ok = True
            result.jobs = written.jobs
            result.nodes = len(snap.nodes)
            result.finished_jobs = written.finished
            return result
    store.record_failure(
        dest.id, result.error or "unknown error", run_id=run_id, started=started, finished=finished
    )
    return result


def _reconcile(config: Config, store: Store, now: datetime, warnings: list[str]) -> ReconcileResult | None:
    """Settle the placement ledger against the snapshots just stored (metasched.store.reconcile).

    After every destination's own transaction: a failure here is a warning, never a lost snapshot.
    """
    try:
        result = reconcile(store, now, ttl_s=config.rank.ledger_ttl, history_days=config.collect.history_days)
    except Exception as exc:
        log.warning("ledger: not reconciled: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        warnings.append(f"ledger: not reconciled: {_one_line(str(exc)) or type(exc).__name__}")
        return None
    if result.resolved or result.finished or result.expired:
        log.info(
            "ledger: %d resolved (%d elsewhere), %d finished, %d expired, %d pruned",
            result.resolved,
            result.elsewhere,
            result.finished,
            result.expired,
            result.pruned,
        )
    return result


def _log_result(r: DestinationResult) -> None:
    if r.ok:
        log.info("%s ok %.2fs %d jobs %d nodes", r.id, r.duration_s, r.jobs, r.nodes)
    else:
        log.warning("%s FAILED: %s", r.id, r.error)


def _metrics(config: Config, store: Store, now: datetime) -> list[str]:
    """Refresh cached InfluxDB metrics and write the capacity summary; problems become warnings.

    Metrics feed rank as hints; an InfluxDB outage must not turn a good collect into a failed one.
    """
    warnings: list[str] = []
    try:
        warnings.extend(pull_metrics(config, store, now))
    except Exception as exc:
        log.warning("influxdb: metrics not refreshed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        warnings.append(f"influxdb: metrics not refreshed: {_one_line(str(exc)) or type(exc).__name__}")
    try:
        write_summary(config, store, now)
    except Exception as exc:
        log.warning("influxdb: summary not written: %s", exc)
        warnings.append(f"influxdb: summary not written: {_one_line(str(exc)) or type(exc).__name__}")
    return warnings


def run_enforcement(
    config: Config, store: Store, *, dry_run: bool = False, only_enabled: bool = False
) -> Report:
    """Enforcement with the real adapters and transports (``metasched enforce``, and after a collect)."""
    return enforce(config, store, WIRING, dry_run=dry_run, only_enabled=only_enabled)


def _enforce_after_collect(config: Config, store: Store) -> list[str]:
    """For the collect run: act for ``enforce: true`` groups; any failure is a warning, not an error."""
    if not any(p.enforce for p in config.policies):
        return []
    try:
        report = run_enforcement(config, store, only_enabled=True)
    except Exception as exc:
        enforce_log.warning("enforce: not done: %s", exc, exc_info=enforce_log.isEnabledFor(logging.DEBUG))
        return [f"enforce: not done: {type(exc).__name__}: {exc}"]
    return [f"enforce: {a.destination} job {a.job}: {a.error}" for a in report.actions if not a.ok]
