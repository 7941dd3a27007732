"""What the worker processes of one ``metasched serve`` (``serve.workers`` > 1) tell each other.

A scrape of /metrics or a /healthz probe reaches whichever worker accepted the connection, but has
to describe the whole service: every worker's request counts, and the collect loop that only the
first worker runs. So each worker rewrites one small file in a directory private to the service
(atomically, every PUBLISH_EVERY_S) with its request counts, and the first also with its loop's
figures and health; the others read them. A peer's counts are at most that old, and only ever grow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msgspec

from metasched.serve.metrics import LoopStats, RequestSnapshot

log = logging.getLogger("metasched.serve")

PUBLISH_EVERY_S = 1.0
# The collecting worker's report is this old: it is stuck or gone (/healthz says so).
LOOP_REPORT_MAX_AGE_S = 10.0


class LoopReport(msgspec.Struct, frozen=True):
    cycles: dict[str, int]
    last_cycle_end: datetime | None
    alive: bool
    health: str | None  # CollectLoop.health(): None when healthy


class Report(msgspec.Struct, frozen=True):
    written: float  # time.time() of the write
    requests: RequestSnapshot
    loop: LoopReport | None = None


class Peers:
    """This worker's view of the others, through ``directory`` (one ``worker-N.json`` per worker)."""

    def __init__(self, directory: Path, index: int, count: int, *, collects: bool) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self.collects = collects  # the first worker runs the collect loop
        self._decoder = msgspec.json.Decoder(Report)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: Callable[[], tuple[RequestSnapshot, LoopReport | None]] | None = None

    def _path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.json"

    def publish(self, requests: RequestSnapshot, loop: LoopReport | None) -> None:
        """Replace this worker's file (write, then rename: a reader never sees half of it)."""
        data = msgspec.json.encode(Report(time.time(), requests, loop))
        tmp = self.directory / f".worker-{self.index}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self._path(self.index))

    def _read(self, index: int) -> Report | None:
        try:
            return self._decoder.decode(self._path(index).read_bytes())
        except FileNotFoundError:
            return None  # not started yet
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("worker %d's report unreadable: %s", index, exc)
            return None

    def requests(self) -> list[RequestSnapshot]:
        """Every other worker's latest request counts."""
        out = []
        for i in range(self.count):
            if i != self.index and (report := self._read(i)) is not None:
                out.append(report.requests)
        return out

    def loop(self) -> tuple[LoopStats, str | None]:
        """The collecting worker's loop figures and health reason (None: healthy)."""
        report = self._read(0)
        if report is None or report.loop is None:
            return LoopStats({}, None, alive=False), "collecting worker has not reported yet"
        loop = report.loop
        stats = LoopStats(loop.cycles, loop.last_cycle_end, loop.alive)
        age = time.time() - report.written
        if age > LOOP_REPORT_MAX_AGE_S:
            return stats, f"collecting worker silent for {age:.0f}s"
        return stats, loop.health

    def start(self, snapshot: Callable[[], tuple[RequestSnapshot, LoopReport | None]]) -> None:
        """Publish now and then every PUBLISH_EVERY_S until ``stop``."""
        self._snapshot = snapshot
        self.publish(*snapshot())

        def run() -> None:
            while not self._stop.wait(PUBLISH_EVERY_S):
                try:
                    self.publish(*snapshot())
                except Exception as exc:  # a full disk must not stop the worker answering
                    log.warning("worker %d could not publish its figures: %s", self.index, exc)

        self._thread = threading.Thread(target=run, name="peers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing after one last report (the final counts of a worker that stops)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._snapshot is not None:
            self.publish(*self._snapshot())
