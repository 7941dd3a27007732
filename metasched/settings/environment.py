"""What comes from the process environment: INFLUXDB_* variables, systemd credentials, local paths."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from metasched.settings.models import InfluxSettings
from metasched.settings.problems import Problem

ENV_LABEL = "environment"  # the FILE part of problems found in INFLUXDB_* variables
CREDENTIAL_PASSWORD = "influxdb-password"  # file names looked up in $CREDENTIALS_DIRECTORY
CREDENTIAL_TOKEN = "influxdb-token"
CREDENTIAL_SERVE_TOKEN = "serve-token"  # bearer token of `metasched serve`
CREDENTIALS_VARS = ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY")  # expanded in file paths


def local_path(value: str | None, base_dir: Path, env: Mapping[str, str]) -> str | None:
    """Paths on this machine: ``~`` expanded; relative ones are relative to the config file's directory.

    ``${CREDENTIALS_DIRECTORY}`` (systemd ``LoadCredential=``) is expanded from ``env``; the directory
    differs per unit and run, so a config shared by the timer and serve can only name it this way.
    Without the variable (e.g. ``rank`` run by Galaxy) the path stays as written: only the commands
    that read the file fail, naming it.
    """
    if value is None:
        return None
    if value.startswith(CREDENTIALS_VARS):
        directory = env.get("CREDENTIALS_DIRECTORY", "").split(":")[0]
        if not directory:
            return value
        for var in CREDENTIALS_VARS:
            value = value.replace(var, directory)
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base_dir / p)


def read_secret(file_path: str) -> tuple[str | None, str | None]:
    """A systemd-credential style file: the whole content minus the trailing newline; or why not."""
    try:
        return Path(file_path).read_text(encoding="utf-8").rstrip("\r\n"), None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, f"cannot read {file_path}: {reason}"


def credential(env: Mapping[str, str], name: str) -> str | None:
    """$CREDENTIALS_DIRECTORY/<name> when systemd passed it (LoadCredential=)."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _env_bool(problems: list[Problem], env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    problems.append(Problem((name,), f"must be true or false, got {raw!r}"))
    return default


def influx_from_env(
    env: Mapping[str, str], read_secrets: bool
) -> tuple[InfluxSettings | None, list[Problem]]:
    """The seed's set_env.sh variables: INFLUXDB_HOST (+ PORT, USERNAME, PASSWORD, DATABASE); TLS on."""
    problems: list[Problem] = []
    host = env.get("INFLUXDB_HOST", "").strip()
    if not host:
        return None, problems
    port_text = env.get("INFLUXDB_PORT", "").strip() or "8086"
    port = int(port_text) if port_text.isdigit() else 0
    if not 1 <= port <= 65535:
        problems.append(Problem(("INFLUXDB_PORT",), f"must be an integer 1-65535, got {port_text!r}"))
        port = 8086
    scheme = "https" if _env_bool(problems, env, "INFLUXDB_SSL", True) else "http"
    if "://" in host:
        url = host.rstrip("/")
    else:
        url = f"{scheme}://[{host}]:{port}" if host.count(":") > 1 else f"{scheme}://{host}:{port}"  # IPv6
    password = env.get("INFLUXDB_PASSWORD") or None
    if password is None and read_secrets:
        password = credential(env, CREDENTIAL_PASSWORD)
    influx = InfluxSettings(
        url=url,
        database=env.get("INFLUXDB_DATABASE") or None,
        username=env.get("INFLUXDB_USERNAME") or None,
        password=password,
        verify_ssl=_env_bool(problems, env, "INFLUXDB_VERIFY_SSL", True),
    )
    return influx, problems
