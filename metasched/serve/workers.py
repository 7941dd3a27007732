"""``metasched serve``: bind the port, then answer on it in one process or ``serve.workers`` of them.

The socket is always bound here, before anything starts: a busy port fails once (exit 1) with no
collect loop started, whatever the worker count. Ranking is CPU-bound Python, so one process uses
one core however many requests wait; with ``serve.workers`` > 1 the parent forks the workers (each
opens its own store connection and runs ``server.run`` on the inherited socket; the kernel hands
each new connection to one of them, and the first also collects) and then only supervises:
SIGTERM/SIGINT and SIGHUP are passed on to every worker, and a worker that exits on its own stops
the others, so the service exits 1 and systemd restarts it whole (Restart=on-failure). The workers
report to each other through files in a private directory (serve.peers), removed at exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from metasched.serve.cache import CachingStore
from metasched.serve.peers import Peers
from metasched.serve.server import run
from metasched.serve.state import Overrides, ServeState
from metasched.settings import Config

log = logging.getLogger("metasched.serve")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
BACKLOG = 2048


def serve_forever(
    config: Config,
    database_url: str,
    *,
    config_path: Path | None,
    env: Mapping[str, str],
    overrides: Overrides,
    collect: bool,
) -> int:
    """``metasched serve``: one process, or ``serve.workers`` of them; the exit status."""
    store = CachingStore.open(database_url)  # a bad database fails here, before anything listens
    serve = config.serve
    try:
        sock = listen(serve.host, serve.port)
    except OSError as exc:
        store.close()
        log.error("not serving: could not listen on %s:%d: %s", serve.host, serve.port, exc.strerror or exc)
        return 1
    with sock:
        if serve.workers == 1:
            state = ServeState(
                config, store, config_path=config_path, env=env, overrides=overrides, collect=collect
            )
            return run(state, sock)
        store.close()  # each worker opens its own: a connection must not cross a fork

        def make_state(index: int, peers: Peers) -> ServeState:
            return ServeState(
                config,
                CachingStore.open(database_url),
                config_path=config_path,
                env=env,
                overrides=overrides,
                collect=collect and index == 0,
                peers=peers,
            )

        log.info(
            "serving on %s:%d with %d workers (the first collects)", serve.host, serve.port, serve.workers
        )
        return run_workers(serve.workers, sock, make_state, collects=collect)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host`` (an address or a name: its first address) and ``port``."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address[:2], family=family, backlog=BACKLOG)


def run_workers(
    count: int,
    sock: socket.socket,
    make_state: Callable[[int, Peers], ServeState],
    *,
    collects: bool,
) -> int:
    """Start ``count`` workers on ``sock`` (worker ``i``'s state from ``make_state(i, peers)``), wait
    for all. Exit status 0 when every worker stopped cleanly after SIGTERM/SIGINT; 1 when a worker
    failed or exited unasked.
    """
    with tempfile.TemporaryDirectory(prefix="metasched-serve-") as share:
        children: dict[int, int] = {}  # pid -> worker index
        stopping = False

        def pass_on(sig: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            if sig != signal.SIGHUP:
                stopping = True
                sig = signal.SIGTERM
            for pid in list(children):
                _kill(pid, sig)

        # Blocked across the forks: a worker must never run the parent's handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        previous = {sig: signal.signal(sig, pass_on) for sig in SIGNALS}
        try:
            for index in range(count):
                pid = os.fork()
                if pid == 0:
                    _worker(index, count, Path(share), sock, make_state, collects)
                children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        status = 0
        try:
            while children:
                pid, raw = os.wait()
                code = os.waitstatus_to_exitcode(raw)
                index = children.pop(pid)
                if not stopping:
                    log.error("worker %d exited (status %d) unasked: stopping the others", index, code)
                    stopping = True
                    status = 1
                    for other in list(children):
                        _kill(other, signal.SIGTERM)
                elif code != 0:
                    log.error("worker %d stopped with status %d", index, code)
                    status = 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status


def _worker(
    index: int,
    count: int,
    share: Path,
    sock: socket.socket,
    make_state: Callable[[int, Peers], ServeState],
    collects: bool,
) -> None:
    """The child's whole life: never returns into the parent's code."""
    code = 1
    try:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # SIGHUP stays held until run() has its handler: a reload asked meanwhile is not lost.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        state = make_state(index, Peers(share, index, count, collects=collects))
        code = run(state, sock)
    except BaseException as exc:
        log.error("worker %d failed: %s: %s", index, type(exc).__name__, exc)
    finally:
        logging.shutdown()
        os._exit(code)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: os.wait() collects it
        os.kill(pid, sig)
