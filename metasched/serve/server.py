"""Run ``metasched serve`` in the foreground: uvicorn on one event loop, signals wired for systemd.

SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, then the lifespan waits for a
running collect cycle (each destination's snapshot is one transaction: it commits or rolls back).
SIGHUP: reload the config. The signal only marks a reload as wanted (the event loop's own signal
handling, so nothing runs in signal context); reloads run one at a time in a worker thread, and any
number of SIGHUPs during one collapse into one more reload, which reads the file as it is then.
Exit status 0 after a clean stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from types import FrameType

from metasched.serve.state import ServeState

log = logging.getLogger("metasched.serve")

GRACEFUL_TIMEOUT_S = 30  # in-flight requests get this long after SIGTERM


class Reloader:
    """Coalesces reload requests; every method runs on the event loop thread."""

    def __init__(self, state: ServeState) -> None:
        self._state = state
        self._wanted = False
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._wanted:
            self._wanted = False
            log.info("SIGHUP: reloading the config")
            await loop.run_in_executor(None, self._state.reload)

    async def finish(self) -> None:
        """Let a running reload end (it only parses a file) so the loop closes without pending work."""
        self._wanted = False
        if self._task is not None:
            await self._task


def run(state: ServeState, sock: socket.socket) -> int:
    """Serve on the bound ``sock`` until stopped (serve.workers: every worker's process runs this)."""
    import uvicorn

    from metasched.serve.app import create_app

    app = create_app(state)
    config = uvicorn.Config(
        app,
        host=state.host,
        port=state.port,
        log_config=None,  # our one-line-per-event stderr logging (set up by the CLI)
        access_log=False,  # requests are counted in /metrics; a line per rank would flood journald
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    # What start-up made (modules, the app, the config) lives as long as the process: moved out of
    # the collector's reach, a full collection walks only what requests made, instead of stalling
    # the event loop, and every request behind it, for all of it.
    gc.freeze()
    early: list[bool] = []  # SIGHUPs before the event loop runs: only remembered (list.append is atomic)

    def hangup_early(_sig: int, _frame: FrameType | None) -> None:
        early.append(True)

    def stopped(_sig: int, _frame: FrameType | None) -> None:
        """uvicorn re-raises the signal that stopped it once it is done; by then we exit normally."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reloader = Reloader(state)
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        if early:
            reloader.request()
        try:
            await server.serve(sockets=[sock])
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # stopping: a reload now would change nothing
            await reloader.finish()

    signal.signal(signal.SIGHUP, hangup_early)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # a worker's, held since its fork
    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(main())
    except SystemExit as exc:  # uvicorn's own exit when the app's startup failed (its 3 is PARTIAL here)
        log.error("not serving: the app did not start (exit status %s from uvicorn)", exc.code)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    return 0
