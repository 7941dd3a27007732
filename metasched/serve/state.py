"""What a running ``metasched serve`` holds: the current config (replaced on SIGHUP), store, loop, stats."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from metasched.domain.errors import ConfigError
from metasched.serve.loop import CollectLoop
from metasched.serve.metrics import LoopStats, RequestSnapshot, RequestStats, RunTally
from metasched.serve.peers import LoopReport, Peers
from metasched.settings import Config, SSHSettings, load_config
from metasched.store import Store

log = logging.getLogger("metasched.serve")

STALE_FACTOR = 3  # /healthz fails when the newest collect in the store is older than this many intervals
STALE_MIN_S = 60.0  # ... and older than this (tiny intervals: a cycle skipped for the timer is no outage)
# No destination has this id (config refuses control characters in ids): the probe reads each table
# and finds nothing. Not NUL: PostgreSQL refuses NUL in text, so /healthz was always 503 there.
PROBE_ID = "\x01healthz"


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line settings that beat the config, re-applied after every reload (seed-2 options)."""

    host: str | None = None
    port: int | None = None
    ssh_user: str | None = None
    ssh_key_file: str | None = None


def apply_overrides(config: Config, o: Overrides) -> Config:
    """--ssh-user/--ssh-key-file set every destination's login (the seed had one user for the cluster)."""

    def ssh(s: SSHSettings) -> SSHSettings:
        return SSHSettings(
            user=o.ssh_user if o.ssh_user is not None else s.user,
            key_file=o.ssh_key_file if o.ssh_key_file is not None else s.key_file,
            known_hosts=s.known_hosts,
            connect_timeout=s.connect_timeout,
            command_timeout=s.command_timeout,
            host_key_policy=s.host_key_policy,
            port=s.port,
        )

    if o.ssh_user is not None or o.ssh_key_file is not None:
        config = msgspec.structs.replace(
            config,
            ssh=ssh(config.ssh),
            destinations=tuple(msgspec.structs.replace(d, ssh=ssh(d.ssh)) for d in config.destinations),
        )
    serve = config.serve
    if o.host is not None:
        serve = msgspec.structs.replace(serve, host=o.host)
    if o.port is not None:
        serve = msgspec.structs.replace(serve, port=o.port)
    return msgspec.structs.replace(config, serve=serve)


class ServeState:
    """Shared by the HTTP handlers, the collect loop and the signal handlers.

    ``config`` is one reference swapped whole on reload, so every request and cycle sees one
    consistent config. Listening address and database are fixed for the process's life.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        config_path: Path | None,
        env: Mapping[str, str],
        overrides: Overrides,
        collect: bool = True,
        peers: Peers | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.config_path = config_path
        self.env = dict(env)
        self.overrides = overrides
        self.host = config.serve.host
        self.port = config.serve.port
        self.requests = RequestStats()
        self.runs = RunTally()
        self.started = datetime.now(UTC)
        self.loop: CollectLoop | None = CollectLoop(lambda: self._config, store) if collect else None
        self.peers = peers  # the other worker processes (serve.workers > 1)
        self._reload_lock = threading.Lock()

    @property
    def config(self) -> Config:
        return self._config

    def start(self) -> None:
        if self.loop is not None:
            self.loop.start()
        if self.peers is not None:
            self.peers.start(self._report)

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        if self.peers is not None:
            self.peers.stop()
        self.store.close()

    def _report(self) -> tuple[RequestSnapshot, LoopReport | None]:
        """What the other workers see of this one."""
        loop = None
        if self.loop is not None:
            stats = self.loop.stats()
            loop = LoopReport(dict(stats.cycles), stats.last_cycle_end, stats.alive, self.loop.health())
        return self.requests.snapshot(), loop

    def reload(self) -> bool:
        """Re-read the config file (SIGHUP). A bad new config is logged and the old one kept."""
        with self._reload_lock:
            try:
                new = apply_overrides(load_config(self.config_path, self.env), self.overrides)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused, old config kept: %s", problem)
                return False
            except Exception as exc:
                log.error("reload refused, old config kept: %s: %s", type(exc).__name__, exc)
                return False
            old = self._config
            if (new.serve.host, new.serve.port) != (self.host, self.port):
                log.warning("reload: serve.host/port changed; restart to listen on the new address")
            if new.serve.workers != old.serve.workers:
                log.warning("reload: serve.workers changed; restart to run that many")
            if new.database != old.database:
                log.warning("reload: database changed; restart to use it")
            self._config = new
            log.info(
                "config reloaded from %s: %d destinations",
                self.config_path or "built-in default",
                len(new.destinations),
            )
            return True

    def health(self) -> str | None:
        """None when healthy; else why not (store unreadable, collect loop dead or stalled or failing,
        or no collect recorded in the store for STALE_FACTOR intervals, whichever process collects)."""
        store = self.store
        try:
            # A read of every table `status` and rank use, each an indexed lookup that finds nothing.
            store.get_setting("schema_version")
            store.summaries([PROBE_ID])
            store.nodes(PROBE_ID)
            store.partitions(PROBE_ID)
            store.history(PROBE_ID, 1)
            store.tool_times("", [PROBE_ID])
            store.metrics([PROBE_ID])
            newest = store.runs(limit=1)
        except Exception as exc:
            return f"store unreadable: {type(exc).__name__}: {' '.join(str(exc).split())}"
        if self.loop is not None:
            reason = self.loop.health()
        elif self.peers is not None and self.peers.collects:
            reason = self.peers.loop()[1]
        else:
            reason = None
        if reason is not None:
            return reason
        now = datetime.now(UTC)
        last = newest[0].finished if newest else self.started  # a new store: count from our start
        age = (now - last).total_seconds()
        limit = max(STALE_MIN_S, STALE_FACTOR * self._config.collect.interval)
        if age > limit:
            what = "newest collect run in the store" if newest else "no collect run in the store"
            return f"no collect for {age:.0f}s ({what}; limit {limit:.0f}s)"
        return None

    def loop_stats(self) -> LoopStats:
        if self.loop is not None:
            return self.loop.stats()
        if self.peers is not None and self.peers.collects:
            return self.peers.loop()[0]
        return LoopStats(cycles={}, last_cycle_end=None, alive=False)
