"""The one parse of a database URL, used by config check, the store and the collect lock: a path,
``sqlite:///relative``, ``sqlite:////absolute`` or ``postgresql://user[:password]@host[:port]/db[?options]``.

``playhouse.db_url`` does not fit: it knows no plain paths, imports every playhouse driver (rank's
start-up pays for them), turns query values into numbers and has no password-free form for messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from metasched.domain.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed URL: exactly one of ``sqlite_file`` and ``postgres`` is set."""

    shown: str  # the URL without its password: safe in messages
    sqlite_file: Path | None = None
    postgres: dict[str, Any] = field(default_factory=dict)  # libpq keywords, dbname included


def parse_url(url: str) -> DatabaseURL:
    """Raises ConfigError naming ``database`` when the URL is unusable."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return DatabaseURL(url, sqlite_file=Path(url).expanduser())
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError([f"database: sqlite URLs look like sqlite:///path, got {url!r}"])
        return DatabaseURL(url, sqlite_file=Path(rest[1:]).expanduser())
    if scheme in ("postgresql", "postgres"):
        return DatabaseURL(redact(url), postgres=_postgres_params(url))
    raise ConfigError([f"database: must be a path, sqlite:///path or postgresql://user@host/db, got {url!r}"])


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL or plain path; None for other schemes and unusable URLs."""
    try:
        return parse_url(url).sqlite_file
    except ConfigError:
        return None


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def _postgres_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError([f"database: invalid port in {redact(url)}"]) from None
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ConfigError([f"database: {redact(url)}: no database name (postgresql://user@host/DBNAME)"])
    params: dict[str, Any] = dict(parse_qsl(parts.query))
    params["dbname"] = dbname
    for key, value in (
        ("host", parts.hostname),
        ("port", port),
        ("user", unquote(parts.username) if parts.username else None),
        ("password", unquote(parts.password) if parts.password else None),
    ):
        if value is not None:
            params.setdefault(key, value)
    return params
