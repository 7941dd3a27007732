"""The collect lock: one collect at a time per database, across processes (timer, serve, operator).

An exclusive ``flock`` on a lock file, not the ``filelock`` library: filelock falls back to a soft
(file-exists) lock where flock is unavailable, which a killed holder leaves behind, and writing the
holder's PID for operators would still be our own code on its descriptor.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from metasched.domain.errors import ExitCode, MetaschedError
from metasched.settings.database_url import sqlite_path

LOCK_POLL_S = 0.1


class CollectAlreadyRunning(MetaschedError):
    """Another collect holds the lock; not an error (the running one does the work)."""

    exit_code = ExitCode.OK


def lock_path(db_url: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the collect lock lives for this database.

    SQLite: ``<db file>.collect.lock`` next to the database, so every process using that file agrees.
    PostgreSQL (and anything without a local file): ``metasched-collect-<hash of URL>.lock`` in
    $RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR, else /tmp. That only serialises collects on
    one host; collects from several hosts sharing a PostgreSQL database still cannot corrupt it
    (each snapshot is one transaction) but may do duplicate work.
    """
    env = os.environ if env is None else env
    file = sqlite_path(db_url)
    if file is not None and file.name != ":memory:" and not str(file).startswith("file:"):
        return file.with_name(file.name + ".collect.lock")
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0] or env.get("XDG_RUNTIME_DIR") or "/tmp"
    digest = hashlib.sha256(db_url.encode()).hexdigest()[:16]
    return Path(runtime) / f"metasched-collect-{digest}.lock"


class CollectLock:
    """An exclusive ``flock`` on a lock file, waited for up to ``timeout`` seconds.

    flock (not a PID file) because the kernel drops it when the holder dies, even by kill -9, so a
    crashed collect never blocks the next one.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        fh = self.path.open("a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.close()
                    raise CollectAlreadyRunning(
                        f"collect already running (lock {self.path} held for more than {self.timeout:g}s)"
                    ) from None
                time.sleep(LOCK_POLL_S)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")  # for operators wondering who holds it
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> CollectLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
