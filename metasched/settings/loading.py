"""The entry points: which file, load it (every problem at once), where the database is."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from metasched.domain.errors import ConfigError
from metasched.settings.assemble import ConfigFile, assemble, resolve_serve
from metasched.settings.document import read_document
from metasched.settings.environment import ENV_LABEL, influx_from_env
from metasched.settings.models import LOCAL_HOST, Config, DestinationConfig, ServeSettings, SSHSettings
from metasched.settings.problems import describe, in_file_order, render
from metasched.settings.walker import decode

SYSTEM_CONFIG = Path("/etc/metasched/config.yml")
DEFAULT_DESTINATION_ID = "localhost"


def resolve_config_path(
    explicit: Path | str | None, env: Mapping[str, str] | None = None, system_path: Path = SYSTEM_CONFIG
) -> Path | None:
    """The config file to use: explicit (--config/METASCHED_CONFIG), then systemd's
    $CONFIGURATION_DIRECTORY/config.yml, then /etc/metasched/config.yml; None means the built-in default.

    Only the explicit path is returned without checking it exists, so a typo is reported, not ignored.
    """
    env = os.environ if env is None else env
    if explicit is not None and str(explicit):
        return Path(explicit)
    if env.get("METASCHED_CONFIG"):
        return Path(env["METASCHED_CONFIG"])
    for directory in env.get("CONFIGURATION_DIRECTORY", "").split(":"):
        if directory and (Path(directory) / "config.yml").is_file():
            return Path(directory) / "config.yml"
    if system_path.is_file():
        return system_path
    return None


def default_config(env: Mapping[str, str] | None = None, *, read_secrets: bool = True) -> Config:
    """The built-in config: one ``node`` destination on this machine, so collect + status need no file."""
    env = os.environ if env is None else env
    influx, env_problems = influx_from_env(env, read_secrets)
    serve, serve_problems = resolve_serve(ServeSettings(), Path.cwd(), env, read_secrets)
    problems = [render(ENV_LABEL, p) for p in [*env_problems, *serve_problems]]
    if problems:
        raise ConfigError(problems)
    local = DestinationConfig(id=DEFAULT_DESTINATION_ID, scheduler="node", host=LOCAL_HOST, ssh=SSHSettings())
    return Config(
        path=None, database=None, ssh=SSHSettings(), destinations=(local,), influxdb=influx, serve=serve
    )


def load_config(
    path: str | Path | None, env: Mapping[str, str] | None = None, *, read_secrets: bool = True
) -> Config:
    """Read and validate a YAML config or a seed-2 JSON cluster file; raise ConfigError with every problem.

    ``path`` None gives the built-in default (see ``default_config``). ``env`` (default os.environ)
    supplies the INFLUXDB_* fallbacks and $CREDENTIALS_DIRECTORY. ``read_secrets=False`` skips reading
    password/token files, for callers (``rank``) that never talk to InfluxDB and may run as a user that
    cannot read them.
    """
    env = os.environ if env is None else env
    if path is None:
        return default_config(env, read_secrets=read_secrets)
    path = Path(path)
    label = str(path)
    raw, read_problems = read_document(path)
    if read_problems:
        raise ConfigError([render(label, p) for p in read_problems])
    if not isinstance(raw, dict):
        raise ConfigError([f"{label}: must be a mapping of settings, got {describe(raw)}"])
    decoded = decode(raw, ConfigFile)
    result = assemble(decoded, path, env, read_secrets)
    problems = [render(label, p) for p in in_file_order([*decoded.problems, *result.problems], raw)]
    problems += [render(ENV_LABEL, p) for p in result.env_problems]
    if problems or result.config is None:
        raise ConfigError(problems or [f"{label}: invalid configuration"])
    return result.config


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """$STATE_DIRECTORY/metasched.db (systemd), else $XDG_STATE_HOME/metasched/metasched.db (~/.local/state).

    A plain path; the Store creates the parent directories on first use.
    """
    env = os.environ if env is None else env
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return str(Path(state_dir) / "metasched.db")
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are invalid: ignore them
        return str(Path(xdg) / "metasched" / "metasched.db")
    home = env.get("HOME") or str(Path.home())
    return str(Path(home) / ".local" / "state" / "metasched" / "metasched.db")


def database_url(config: Config, override: str | None, env: Mapping[str, str] | None = None) -> str:
    """--database/METASCHED_DATABASE beats the config's ``database:``, which beats the default location."""
    if override:
        return override
    if config.database:
        return config.database
    return default_database_url(env)
