"""The store's one database-URL parse (metasched.store.url): what Store.open and rank read from a URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasched.domain.errors import ConfigError
from metasched.settings.database_url import parse_url, redact, sqlite_path


def test_sqlite_forms() -> None:
    assert parse_url("x.db").sqlite_file == Path("x.db")
    assert parse_url("~/x.db").sqlite_file == Path("~/x.db").expanduser()
    assert parse_url("sqlite:///rel/x.db").sqlite_file == Path("rel/x.db")
    assert parse_url("sqlite:////abs/x.db").sqlite_file == Path("/abs/x.db")
    assert parse_url("SQLITE:///x.db").sqlite_file == Path("x.db")
    assert parse_url("sqlite:///x.db").postgres == {}


def test_postgres_params_are_unquoted_and_query_options_kept() -> None:
    url = "postgresql://al%40ice:p%3Ass@db.example:6543/my%20db?sslmode=require&options=-c%20x%3D1"
    parsed = parse_url(url)
    assert parsed.sqlite_file is None
    assert parsed.postgres == {
        "dbname": "my db",
        "host": "db.example",
        "port": 6543,
        "user": "al@ice",
        "password": "p:ss",
        "sslmode": "require",
        "options": "-c x=1",
    }
    assert (
        parsed.shown == "postgresql://al%40ice:***@db.example:6543/my%20db?sslmode=require&options=-c%20x%3D1"
    )
    assert parse_url("postgres://u@h/db").postgres == {"dbname": "db", "host": "h", "user": "u"}


def test_query_parameters_beat_the_netloc() -> None:
    assert parse_url("postgresql://u@h/db?host=/run/postgresql").postgres["host"] == "/run/postgresql"


def test_redact_keeps_urls_without_password() -> None:
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert "secret" not in parse_url("postgresql://u:secret@h/db").shown


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "sqlite://host/x.db",
        "sqlite:///",
        "postgresql://u@h:notaport/db",
        "postgresql://u@h/",
    ],
)
def test_unusable_urls_name_database(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_url(url)
    assert str(err.value).startswith("database:")
    assert sqlite_path(url) is None


def test_sqlite_path_is_none_for_postgres() -> None:
    assert sqlite_path("postgresql://u@h/db") is None
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
