"""InfluxDB <-> the store: collect refreshes the metric cache and writes the capacity summary back."""

from __future__ import annotations

import logging
from datetime import datetime

from metasched import metrics
from metasched.settings import Config
from metasched.store import Store

log = logging.getLogger("metasched.metrics")


def pull_metrics(config: Config, store: Store, now: datetime) -> list[str]:
    """Refresh the store's metric cache from InfluxDB; return warnings (empty when all went well).

    A measurement whose query failed keeps its old cached rows; once the server proves unusable
    (down, TLS, authentication) it is not asked further, so when it is down nothing is replaced.
    """
    fetched = metrics.fetch_metrics(config, now)
    for source, rows in fetched.rows.items():
        store.replace_metrics(source, rows, now)
    for w in fetched.warnings:
        log.warning("%s", w)
    return fetched.warnings


def write_summary(config: Config, store: Store, now: datetime) -> None:
    """The stored summaries as line protocol when ``influxdb.write_summary`` is on; InfluxError on failure."""
    if config.influxdb is not None and config.influxdb.write_summary:
        metrics.write_summary(config, store.summaries(), now)
