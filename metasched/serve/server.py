"""Run ``metasched serve`` in the foreground: uvicorn on one event loop, signals wired for systemd.

SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, then the lifespan waits for a
running collect cycle (each destination's snapshot is one transaction: it commits or rolls back).
SIGHUP: reload the config. Exit status 0 after a clean stop.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from metasched.serve.state import ServeState

log = logging.getLogger("metasched.serve")

GRACEFUL_TIMEOUT_S = 30  # in-flight requests get this long after SIGTERM


def run(state: ServeState) -> int:
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

    def hangup(_sig: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP: reloading the config")
        state.reload()

    def stopped(_sig: int, _frame: FrameType | None) -> None:
        """uvicorn re-raises the signal that stopped it once it is done; by then we exit normally."""

    signal.signal(signal.SIGHUP, hangup)
    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's own exit when it cannot listen (its code 3 means PARTIAL here)
        log.error(
            "not serving: could not listen on %s:%d (exit status %s from uvicorn)",
            state.host,
            state.port,
            exc.code,
        )
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    return 0
