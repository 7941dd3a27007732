"""``config check``: ``load_config`` plus the checks of what the values mean (weight and measurement names).

Not imported by ``metasched.settings`` itself: ``rank`` loads the config on every call and never
needs the measurement specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from metasched.domain.errors import ConfigError, InputError
from metasched.settings.loading import load_config
from metasched.settings.measurements import specs_from_overrides
from metasched.settings.models import Config
from metasched.settings.weights import make_weights


class ConfigReport(msgspec.Struct, frozen=True):
    """What ``config check`` shows: the file checked, the config when usable, every problem."""

    label: str  # the file, or "built-in default"
    config: Config | None
    problems: list[str]


def inspect_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> ConfigReport:
    """``load_config`` plus the checks of the values' meaning: rank weight names, metric overrides.

    The other commands report those when they use the values.
    """
    label = str(path) if path is not None else "built-in default"
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        return ConfigReport(label, None, list(exc.problems))
    return ConfigReport(label, config, [f"{label}: {p}" for p in _meaning_problems(config)])


def _meaning_problems(config: Config) -> list[str]:
    problems: list[str] = []
    try:
        make_weights(("rank.weights", config.rank.weights))
    except InputError as exc:
        problems.append(str(exc))
    if config.influxdb is not None:
        problems.extend(specs_from_overrides(config.influxdb.measurements)[1])
    return problems


def check_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of a config file as ``FILE: key.path: message`` lines (empty when valid)."""
    return inspect_config(path, env).problems
