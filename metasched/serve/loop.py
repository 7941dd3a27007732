"""The collect loop of ``metasched serve``: one thread, one cycle at a time, every interval with jitter.

Cycles never overlap: the thread runs them one after the other, and ``collect_all`` takes the collect
lock shared with the timer-driven ``metasched collect`` (a cycle that finds it held is skipped, the
other process does the work). Per-destination failures are normal results; a cycle that raises (the
store cannot be written, a bug) is logged, makes /healthz fail until a later cycle succeeds, and the
loop carries on. So the thread does not die of a failing cycle (only of a BaseException, which
/healthz reports); what can go wrong is a cycle that hangs, which the heartbeat (the running cycle's
start time) turns into "collect loop stalled" once it exceeds ``stall_limit``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from metasched.app.collect import collect_all
from metasched.app.lock import CollectAlreadyRunning
from metasched.serve.metrics import LoopStats
from metasched.settings import Config
from metasched.store import Store

log = logging.getLogger("metasched.serve.collect")

STALL_FACTOR = 3  # a cycle running longer than the lock wait plus this many intervals is stalled


class CollectLoop:
    """Runs collect cycles in a daemon thread until ``stop()``; ``health()`` says what is wrong."""

    def __init__(self, config: Callable[[], Config], store: Store, rng: random.Random | None = None) -> None:
        self._config = config  # read at every cycle: a SIGHUP reload takes effect at the next one
        self._store = store
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="collect-loop", daemon=True)
        self._cycles: dict[str, int] = {}
        self._failure: str | None = None  # why the last cycle raised
        self._crash: str | None = None  # why the thread ended, if it did by an exception
        self._cycle_started: float | None = None  # time.monotonic() of the running cycle
        self._last_end: datetime | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the loop to end and wait for a running cycle to finish; True when the thread ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def health(self) -> str | None:
        """None when healthy, else the reason (for /healthz)."""
        with self._lock:
            failure, crash, started = self._failure, self._crash, self._cycle_started
        if not self._thread.is_alive():
            return f"collect loop stopped: {crash}" if crash else "collect loop is not running"
        if failure:
            return f"last collect cycle failed: {failure}"
        if started is not None:
            running = time.monotonic() - started
            limit = stall_limit(self._config())
            if running > limit:
                return f"collect loop stalled: cycle running for {running:.0f}s (limit {limit:.0f}s)"
        return None

    def stats(self) -> LoopStats:
        with self._lock:
            return LoopStats(
                cycles=dict(self._cycles),
                last_cycle_end=self._last_end,
                alive=self._thread.is_alive() and self._failure is None,
            )

    def _run(self) -> None:
        try:
            # A fleet restarted together (a deploy, a power cut) would otherwise collect in step for
            # ever: the first cycle waits a random 0..jitter share of the interval, each later wait
            # is the interval +- that share.
            settings = self._config().collect
            delay = self._rng.uniform(0, settings.jitter * settings.interval)
            log.info("first collect cycle in %.2fs (collect.jitter)", delay)
            self._stop.wait(delay)
            while not self._stop.is_set():
                started = time.monotonic()
                self._cycle()
                settings = self._config().collect
                share = self._rng.uniform(-settings.jitter, settings.jitter)
                wait = settings.interval * (1 + share) - (time.monotonic() - started)
                self._stop.wait(max(0.0, wait))
        except BaseException as exc:  # the thread is gone: /healthz must say so, with the cause
            with self._lock:
                self._crash = f"{type(exc).__name__}: {_one_line(exc)}"
            log.critical("collect loop crashed: %s", self._crash)
            log.debug("collect loop crash", exc_info=exc)
        finally:
            self._store.close()

    def _cycle(self) -> None:
        config = self._config()
        with self._lock:
            self._cycle_started = time.monotonic()
        outcome = "failed"
        try:
            report = collect_all(config, self._store)
        except CollectAlreadyRunning as exc:
            outcome = "skipped"
            log.info("collect cycle skipped: %s", exc)
            failure = None
        except Exception as exc:
            log.error("collect cycle failed: %s: %s", type(exc).__name__, _one_line(exc))
            log.debug("collect cycle failure", exc_info=True)
            failure = f"{type(exc).__name__}: {_one_line(exc)}"
        else:
            failure = None
            outcome = "partial" if report.failed_count else "ok"
            duration = (report.finished - report.started).total_seconds()
            log.info(
                "collect cycle: %d ok, %d failed in %.2fs", report.ok_count, report.failed_count, duration
            )
            for warning in report.warnings:
                log.warning("collect: %s", warning)
        with self._lock:
            self._cycle_started = None
            self._failure = failure
            self._cycles[outcome] = self._cycles.get(outcome, 0) + 1
            self._last_end = datetime.now(UTC)


def stall_limit(config: Config) -> float:
    """How long a cycle may run before /healthz calls the loop stalled: the wait for the collect lock
    plus STALL_FACTOR intervals. Deliberately not derived from the SSH timeouts: a destination whose
    command hangs within a generous command_timeout still leaves the state stale, which is what the
    health check is for (the cycle goes on and the check recovers when it ends)."""
    return config.collect.lock_timeout + STALL_FACTOR * config.collect.interval


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
