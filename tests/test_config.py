"""The configuration layer: real files in tmp_path, the committed examples, and `metasched config check`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metasched.cli import app
from metasched.domain.errors import ConfigError, ExitCode
from metasched.settings import (
    SSHSettings,
    database_url,
    default_database_url,
    load_config,
    resolve_config_path,
    slug,
)
from metasched.settings.check import check_config, inspect_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "config"
EXAMPLE = ROOT / "config" / "example.yml"
MINIMAL = ROOT / "config" / "minimal.yml"
SEED2 = ROOT / "config" / "seed2-cluster.json"

MINIMAL_TEXT = """\
database: /var/lib/metasched/metasched.db     # a path, sqlite:///path or postgresql://user@host/db
ssh:                                          # defaults for every destination
  user: metasched
  key_file: /etc/metasched/id_ed25519
  known_hosts: /etc/metasched/known_hosts
  connect_timeout: 10
  command_timeout: 30
destinations:
  - id: slurm_de          # the TPV destination id
    scheduler: slurm      # slurm | node (sge, htcondor, yarn come in a later issue)
    host: 127.0.0.1       # or "local": run the commands on this machine without SSH
    port: 22
    env: {SLURM_CONF: /etc/slurm/slurm.conf}   # extra environment for remote commands
    latitude: 51.16
    longitude: 10.45
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.problems


def one_destination(extra: str, dest_id: str = "d1", scheduler: str = "slurm") -> str:
    return f"destinations:\n  - id: {dest_id}\n    scheduler: {scheduler}\n    host: h1\n{extra}"


# --- the committed files ------------------------------------------------------------------------


def test_minimal_file_from_the_issue_loads_as_written(tmp_path: Path) -> None:
    assert MINIMAL.read_text() == MINIMAL_TEXT
    cfg = load_config(write(tmp_path, MINIMAL_TEXT), {})
    assert cfg.database == "/var/lib/metasched/metasched.db"
    assert cfg.ssh == SSHSettings(
        user="metasched",
        key_file="/etc/metasched/id_ed25519",
        known_hosts="/etc/metasched/known_hosts",
        connect_timeout=10.0,
        command_timeout=30.0,
    )
    (dest,) = cfg.destinations
    assert (dest.id, dest.scheduler, dest.host, dest.ssh.port) == ("slurm_de", "slurm", "127.0.0.1", 22)
    assert dest.ssh.user == "metasched" and dest.ssh.host_key_policy == "strict"
    assert dest.env == {"SLURM_CONF": "/etc/slurm/slurm.conf"}
    assert (dest.latitude, dest.longitude) == (51.16, 10.45)
    assert not dest.is_local and cfg.influxdb is None and cfg.policies == ()


def test_example_loads_cleanly_with_no_consumer_problems() -> None:
    report = inspect_config(EXAMPLE, {})
    assert report.problems == []
    assert report.config is not None
    ids = [d.id for d in report.config.destinations]
    assert ids == ["slurm_de", "workstation", "sge_es", "hadoop_es", "pulsar_au"]
    assert report.config.policies[0].weights == {"sge_es": 70.0, "hadoop_es": 30.0}


def test_example_documents_every_key() -> None:
    """Each key the validator accepts appears in example.yml (set or commented): it is the reference."""
    import msgspec.inspect as mi

    from metasched.settings.assemble import ConfigFile

    def struct_keys(t: mi.Type) -> set[str]:
        """Every key of every section the file form reaches (the schema is the reference's reference)."""
        if isinstance(t, mi.Metadata):
            return struct_keys(t.type)
        if isinstance(t, mi.StructType):
            fields = [f for f in t.fields if f.encode_name != "cluster"]  # seed 2: config/seed2-cluster.json
            return {f.encode_name for f in fields}.union(*(struct_keys(f.type) for f in fields))
        if isinstance(t, mi.UnionType):
            return set().union(*(struct_keys(m) for m in t.types))
        if isinstance(t, mi.ListType | mi.VarTupleType):
            return struct_keys(t.item_type)
        if isinstance(t, mi.DictType):
            return struct_keys(t.value_type)
        return set()

    text = EXAMPLE.read_text()
    keys = struct_keys(mi.type_info(ConfigFile))
    undocumented = sorted(k for k in keys if not re.search(rf"^\s*#?\s*-?\s*{re.escape(k)}:", text, re.M))
    assert undocumented == []


def test_seed2_example_loads() -> None:
    cfg = load_config(SEED2, {})
    assert [d.id for d in cfg.destinations] == [
        "node-192.168.1.10",
        "node-192.168.1.11",
        "node-192.168.1.12",
        "sge",
        "apache_hadoop",
    ]
    (policy,) = cfg.policies
    assert policy.name == "best_effort" and policy.high_priority == "sge"


# --- seed-2 JSON --------------------------------------------------------------------------------


def test_seed2_file_with_config_extension_and_repeated_ips(tmp_path: Path) -> None:
    cfg = load_config(FIXTURES / "seed2-test.config", {})
    by_id = {d.id: d for d in cfg.destinations}
    assert list(by_id) == [
        "node-10.0.0.1",
        "node-10.0.0.2-2222",
        "node-10.0.0.2-2223",
        "slurm",
        "sge",
        "apache_hadoop",
    ]
    assert all(by_id[i].scheduler == "node" for i in list(by_id)[:3])
    assert (by_id["slurm"].scheduler, by_id["slurm"].host, by_id["slurm"].ssh.port) == (
        "slurm",
        "10.0.0.1",
        22,
    )
    assert (by_id["sge"].scheduler, by_id["sge"].host, by_id["sge"].ssh.port) == ("sge", "10.0.0.2", 2222)
    assert by_id["apache_hadoop"].scheduler == "yarn" and by_id["apache_hadoop"].ssh.port == 2223
    (policy,) = cfg.policies
    assert policy.name == "shared"
    assert policy.destinations == ("slurm", "sge", "apache_hadoop")
    assert policy.high_priority == "sge"
    assert policy.weights == {"slurm": 50.0, "sge": 30.0, "apache_hadoop": 20.0}
    assert policy.nodes == ("node-10.0.0.1", "node-10.0.0.2-2222", "node-10.0.0.2-2223")


def test_seed2_file_takes_top_level_ssh_defaults(tmp_path: Path) -> None:
    data = json.loads(SEED2.read_text())
    data["ssh"] = {"user": "metascheduler", "key_file": "keys/id", "port": 2200}
    data["cluster"]["nodes"][0].pop("port")
    cfg = load_config(write(tmp_path, json.dumps(data), "cluster.json"), {})
    first = cfg.destinations[0]
    assert first.ssh.user == "metascheduler" and first.ssh.port == 2200
    assert first.ssh.key_file == str(tmp_path / "keys" / "id")


def test_seed2_file_logs_in_as_metascheduler_like_the_seed(tmp_path: Path) -> None:
    """The seed's --ssh-user defaulted to metascheduler; its cluster files carry no user."""
    cfg = load_config(FIXTURES / "seed2-test.config", {})
    assert {d.ssh.user for d in cfg.destinations} == {"metascheduler"}
    data = json.loads(SEED2.read_text())
    data["ssh"] = {"key_file": "keys/id"}  # an ssh block without a user keeps the seed's user
    assert {
        d.ssh.user for d in load_config(write(tmp_path, json.dumps(data), "a.json"), {}).destinations
    } == {"metascheduler"}
    # metasched serve --ssh-user/--ssh-key-file still win over the seed's default
    from metasched.serve.state import Overrides, apply_overrides

    served = apply_overrides(cfg, Overrides(ssh_user="ops", ssh_key_file="/etc/metasched/id"))
    assert {(d.ssh.user, d.ssh.key_file) for d in served.destinations} == {("ops", "/etc/metasched/id")}
    data["ssh"] = {"user": "galaxy"}
    assert {
        d.ssh.user for d in load_config(write(tmp_path, json.dumps(data), "b.json"), {}).destinations
    } == {"galaxy"}


def test_seed2_problems_name_the_json_path() -> None:
    path = FIXTURES / "seed2-broken.json"
    expected = (FIXTURES / "seed2-broken.expected").read_text().replace("{FILE}", str(path)).splitlines()
    assert problems_of(path) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SGE", "sge"),
        ("Apache Hadoop", "apache_hadoop"),
        ("HTCondor", "htcondor"),
        (" My-Slurm 2 ", "my_slurm_2"),
    ],
)
def test_slug(name: str, expected: str) -> None:
    assert slug(name) == expected


# --- validation ---------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    path = FIXTURES / "many-problems.yml"
    expected = (FIXTURES / "many-problems.expected").read_text().replace("{FILE}", str(path)).splitlines()
    assert problems_of(path) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            one_destination("    sge: {bin_dir: /opt/sge/bin, queue: all.q}\n", scheduler="sge"),
            "destinations[0].sge.queue: unknown key (allowed: bin_dir, root, cell)",
            id="unknown-nested-key",
        ),
        pytest.param(
            "rank:\n  max_state_age: 300\n  weigths: {}\n", "rank.weigths: unknown key", id="unknown-key"
        ),
        pytest.param("colect: {}\n", "colect: unknown key (did you mean 'collect'?)", id="unknown-top-key"),
        pytest.param("rank: {ledger: 'yes'}\n", "rank.ledger: must be true or false, got 'yes'", id="ledger"),
        pytest.param(
            "rank: {ledger_ttl: 0}\n", "rank.ledger_ttl: must be a number > 0, got 0", id="ledger-ttl-zero"
        ),
        pytest.param(
            "rank: {ledger_ttl: '30m'}\n",
            "rank.ledger_ttl: must be a number > 0, got '30m'",
            id="ledger-ttl-type",
        ),
        pytest.param(
            one_destination("    port: '22'\n"),
            "destinations[0].port: must be an integer 1-65535, got '22'",
            id="port-type",
        ),
        pytest.param(
            one_destination("    command_timeout: -1\n"),
            "destinations[0].command_timeout: must be a number > 0, got -1",
            id="negative-timeout",
        ),
        pytest.param(
            one_destination("    enabled: 'no'\n"),
            "destinations[0].enabled: must be true or false, got 'no'",
            id="bool-type",
        ),
        pytest.param(
            "destinations: {id: x}\n", "destinations: must be a list, got a mapping", id="list-type"
        ),
        pytest.param(
            one_destination("  - id: d1\n    scheduler: node\n    host: local\n"),
            "destinations[1].id: duplicate destination id 'd1' (also destinations[0].id)",
            id="duplicate-id",
        ),
        pytest.param(
            one_destination("    latitude: -90.5\n    longitude: 0\n"),
            "destinations[0].latitude: must be a number between -90 and 90, got -90.5",
            id="latitude",
        ),
        pytest.param(
            "objectstores:\n  files: {latitude: 0, longitude: 180.1}\n",
            "objectstores.files.longitude: must be a number between -180 and 180, got 180.1",
            id="objectstore-longitude",
        ),
        pytest.param(
            one_destination("", scheduler="pbs"),
            "destinations[0].scheduler: must be one of slurm, node, sge, htcondor, yarn, got 'pbs'",
            id="scheduler",
        ),
        pytest.param(
            "destinations:\n  - {id: d1, scheduler: slurm}\n",
            "destinations[0].host: is required",
            id="missing-host",
        ),
        pytest.param(
            "destinations:\n  - {id: d1, scheduler: slurm, host: -oProxyCommand=x}\n",
            "destinations[0].host: must not contain whitespace or start with '-', got '-oProxyCommand=x'",
            id="option-injection-host",
        ),
        pytest.param(
            one_destination("    env: {'BAD NAME': x}\n"),
            "destinations[0].env.BAD NAME: is not a valid environment variable name",
            id="env-name",
        ),
        pytest.param(
            one_destination("    yarn_url: http://rm:8088\n"),
            "destinations[0].yarn_url: only applies to scheduler yarn (this destination is slurm)",
            id="yarn-url-on-slurm",
        ),
        pytest.param(
            one_destination("policies:\n  - {name: shared, destinations: [d1], weights: {d1: 101}}\n"),
            "policies[0].weights.d1: must be a number between 0 and 100, got 101",
            id="weight-range",
        ),
        pytest.param(
            one_destination("  - {id: d2, scheduler: sge, host: h2}\n")
            + "policies:\n  - {name: dynamic, destinations: [d1, d2], weights: {d1: 60, d2: 60}}\n",
            "policies[0].weights: must sum to 100, got 120",
            id="weights-sum",
        ),
        pytest.param(
            one_destination("  - {id: d2, scheduler: sge, host: h2}\n")
            + "policies:\n  - {name: best_effort, destinations: [d1]}\n",
            "policies[0].high_priority: is required for best_effort",
            id="best-effort-needs-high-priority",
        ),
        pytest.param(
            one_destination("  - {id: d2, scheduler: sge, host: h2}\n")
            + "policies:\n  - {name: best_effort, destinations: [d1], high_priority: d2}\n",
            "policies[0].high_priority: 'd2' is not one of this policy's destinations",
            id="high-priority",
        ),
        pytest.param(
            one_destination("policies:\n  - {name: fair, destinations: [d1]}\n"),
            "policies[0].name: must be one of exclusive, best_effort, shared, dynamic, got 'fair'",
            id="policy-name",
        ),
        pytest.param(
            one_destination(
                "policies:\n  - {name: shared, destinations: [d1]}\n"
                "  - {name: exclusive, destinations: [d1]}\n"
            ),
            "policies[1].destinations: 'd1' is already governed by policies[0]",
            id="policy-overlap",
        ),
        pytest.param(
            "database: sqlite://relative.db\n",
            "database: sqlite URLs look like sqlite:///path, got 'sqlite://relative.db'",
            id="sqlite-url",
        ),
        pytest.param(
            "influxdb: {url: influx:8086, database: galaxy}\n",
            "influxdb.url: must start with http:// or https://, got 'influx:8086'",
            id="influx-url",
        ),
        pytest.param(
            "influxdb: {url: 'http://i:8086'}\n",
            "influxdb.database: is required for InfluxDB 1.x",
            id="influx-v1-database",
        ),
        pytest.param(
            "influxdb: {url: 'http://i:8086', version: 2, token: t, org: o}\n",
            "influxdb.bucket: is required for InfluxDB 2.x",
            id="influx-v2-bucket",
        ),
        pytest.param(
            "influxdb: {url: 'http://i:8086', database: g, window: 15 minutes}\n",
            "influxdb.window: must be a duration like 90s, 15m, 2h, 2d or 1w, got '15 minutes'",
            id="influx-window",
        ),
        pytest.param(
            "influxdb: {url: 'http://i:8086', database: g,"
            " measurements: {queue_by_destination: {columns: {a: [1]}}}}\n",
            "influxdb.measurements.queue_by_destination.columns.a: must be a single value, got a list",
            id="measurement-shape",
        ),
        pytest.param("- just\n- a list\n", "must be a mapping of settings, got a list", id="top-level-list"),
        pytest.param("", "is empty (expected a mapping of settings)", id="empty"),
        pytest.param(
            "ssh:\n  user: a\nssh:\n  user: b\n",
            "line 3, column 1: invalid YAML: duplicate key 'ssh'",
            id="dup-key",
        ),
    ],
)
def test_validation_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: {expected}") for p in problems), problems


def test_yaml_syntax_error_is_one_line_with_its_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "ssh:\n  user: a\n   port: 22\ndestinations: []\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: line 3, column ")
    assert "invalid YAML" in problem and "\n" not in problem


def test_json_syntax_error_has_its_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, '{"cluster": {\n  "nodes": [,]\n}}\n', "cluster.json")
    assert problems_of(path) == [f"{path}: line 2, column 13: invalid JSON: Expecting value"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    assert problems_of(path) == [f"{path}: cannot read: No such file or directory"]
    assert check_config(path, {}) == [f"{path}: cannot read: No such file or directory"]


def test_consumer_checks_name_unknown_weights_and_measurements(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rank: {weights: {speed: 2}}\n"
        "influxdb: {url: 'http://i:8086', database: g, measurements: {queue_by_host: {name: q}}}\n",
    )
    load_config(path, {})  # the shape is fine ...
    problems = check_config(path, {})  # ... but rank and metrics know these names do not exist
    assert problems[0].startswith(f"{path}: rank.weights.speed: unknown weight")
    assert problems[1].startswith(f"{path}: influxdb.measurements.queue_by_host: unknown measurement")


# --- merging and paths --------------------------------------------------------------------------


def test_destination_ssh_overrides_merge_over_defaults(tmp_path: Path) -> None:
    text = (
        "ssh: {user: ms, key_file: /k, known_hosts: /kh, connect_timeout: 3, port: 2222}\n"
        "destinations:\n"
        "  - {id: a, scheduler: slurm, host: h1}\n"
        "  - {id: b, scheduler: node, host: h2, user: other, port: 22, host_key_policy: accept-new,"
        " command_timeout: 5}\n"
    )
    a, b = load_config(write(tmp_path, text), {}).destinations
    assert a.ssh == SSHSettings(user="ms", key_file="/k", known_hosts="/kh", connect_timeout=3.0, port=2222)
    assert b.ssh == SSHSettings(
        user="other",
        key_file="/k",
        known_hosts="/kh",
        connect_timeout=3.0,
        command_timeout=5.0,
        host_key_policy="accept-new",
        port=22,
    )


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    text = (
        "database: state/ms.db\n"
        "ssh: {key_file: keys/id_ed25519, known_hosts: ~/kh}\n"
        "destinations:\n  - {id: a, scheduler: slurm, host: h, key_file: other_key}\n"
    )
    cfg = load_config(write(sub, text), {})
    assert cfg.database == str(sub / "state" / "ms.db")
    assert cfg.ssh.key_file == str(sub / "keys" / "id_ed25519")
    assert cfg.ssh.known_hosts == str(Path("~/kh").expanduser())
    assert cfg.destinations[0].ssh.key_file == str(sub / "other_key")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/abs/ms.db", "/abs/ms.db"),
        ("sqlite:////abs/ms.db", "sqlite:////abs/ms.db"),
        ("sqlite:///rel/ms.db", "{DIR}/rel/ms.db"),
        ("postgresql://ms@db.example.org/metasched", "postgresql://ms@db.example.org/metasched"),
    ],
)
def test_database_forms(tmp_path: Path, value: str, expected: str) -> None:
    cfg = load_config(write(tmp_path, f"database: '{value}'\n"), {})
    assert cfg.database == expected.replace("{DIR}", str(tmp_path))


# --- InfluxDB settings --------------------------------------------------------------------------


def test_influx_from_seed_environment_variables(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TEXT)
    env = {
        "INFLUXDB_HOST": "influx.example.org",
        "INFLUXDB_USERNAME": "galaxy",
        "INFLUXDB_PASSWORD": "s3cret",
        "INFLUXDB_DATABASE": "metrics",
    }
    influx = load_config(path, env).influxdb
    assert influx is not None
    assert influx.url == "https://influx.example.org:8086"
    assert (influx.username, influx.password, influx.database) == ("galaxy", "s3cret", "metrics")
    assert influx.verify_ssl and influx.version == 1

    env |= {"INFLUXDB_PORT": "8087", "INFLUXDB_SSL": "false", "INFLUXDB_VERIFY_SSL": "0"}
    influx = load_config(path, env).influxdb
    assert influx is not None and influx.url == "http://influx.example.org:8087" and not influx.verify_ssl

    assert load_config(path, {}).influxdb is None
    assert load_config(None, env).influxdb == influx  # the built-in default reads them too


def test_bad_influx_environment_is_a_problem(tmp_path: Path) -> None:
    env = {"INFLUXDB_HOST": "i", "INFLUXDB_PORT": "80a", "INFLUXDB_SSL": "maybe"}
    assert problems_of(write(tmp_path, MINIMAL_TEXT), env) == [
        "environment: INFLUXDB_PORT: must be an integer 1-65535, got '80a'",
        "environment: INFLUXDB_SSL: must be true or false, got 'maybe'",
    ]


def test_influx_block_wins_over_environment(tmp_path: Path) -> None:
    text = "influxdb: {url: 'http://127.0.0.1:8086/', database: g, verify_ssl: false, timeout: 2.5}\n"
    influx = load_config(write(tmp_path, text), {"INFLUXDB_HOST": "elsewhere"}).influxdb
    assert influx is not None
    assert (influx.url, influx.database, influx.verify_ssl, influx.timeout) == (
        "http://127.0.0.1:8086",
        "g",
        False,
        2.5,
    )


def test_password_file_and_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    text = "influxdb: {url: 'http://i:8086', database: g, username: u, password_file: pw}\n"
    path = write(tmp_path, text)
    influx = load_config(path, {}).influxdb
    assert influx is not None and influx.password == "from-file"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "influxdb-password").write_text("from-systemd\n")
    no_pw = write(tmp_path, "influxdb: {url: 'http://i:8086', database: g}\n", "c2.yml")
    influx = load_config(no_pw, {"CREDENTIALS_DIRECTORY": str(creds)}).influxdb
    assert influx is not None and influx.password == "from-systemd"
    env_only = load_config(MINIMAL, {"INFLUXDB_HOST": "i", "CREDENTIALS_DIRECTORY": str(creds)}).influxdb
    assert env_only is not None and env_only.password == "from-systemd"

    (tmp_path / "pw").unlink()
    (problem,) = problems_of(path)
    assert (
        problem == f"{path}: influxdb.password_file: cannot read {tmp_path / 'pw'}: No such file or directory"
    )
    # rank never talks to InfluxDB and may run as a user that cannot read the secret
    influx = load_config(path, {}, read_secrets=False).influxdb
    assert influx is not None and influx.password is None


def test_password_and_password_file_together_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    path = write(tmp_path, "influxdb: {url: 'http://i:8086', database: g, password: a, password_file: pw}\n")
    assert problems_of(path) == [f"{path}: influxdb.password_file: give password or password_file, not both"]


def test_influx_v2_with_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    text = "influxdb: {url: 'https://i:8086', version: 2, token_file: token, org: o, bucket: b}\n"
    influx = load_config(write(tmp_path, text), {}).influxdb
    assert influx is not None
    assert (influx.version, influx.token, influx.org, influx.bucket) == (2, "tok", "o", "b")


# --- lookup and the default ---------------------------------------------------------------------


def test_default_database_url_rules(tmp_path: Path) -> None:
    assert (
        default_database_url({"STATE_DIRECTORY": "/var/lib/ms:/var/lib/other"}) == "/var/lib/ms/metasched.db"
    )
    assert (
        default_database_url({"XDG_STATE_HOME": "/x/state", "HOME": "/h"})
        == "/x/state/metasched/metasched.db"
    )
    assert (
        default_database_url({"XDG_STATE_HOME": "rel", "HOME": "/h"})
        == "/h/.local/state/metasched/metasched.db"
    )
    assert default_database_url({"HOME": "/h"}) == "/h/.local/state/metasched/metasched.db"


def test_database_url_precedence(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/state"}
    with_db = load_config(MINIMAL, {})
    without_db = load_config(None, {})
    assert database_url(with_db, "sqlite:////o.db", env) == "sqlite:////o.db"
    assert database_url(with_db, None, env) == "/var/lib/metasched/metasched.db"
    assert database_url(without_db, None, env) == "/state/metasched.db"


def test_resolve_config_path_order(tmp_path: Path) -> None:
    system = tmp_path / "etc" / "config.yml"
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    assert resolve_config_path(None, {}, system) is None
    system.parent.mkdir()
    system.write_text(MINIMAL_TEXT)
    assert resolve_config_path(None, {}, system) == system
    assert (
        resolve_config_path(None, {"CONFIGURATION_DIRECTORY": str(confdir)}, system) == system
    )  # no file there
    (confdir / "config.yml").write_text(MINIMAL_TEXT)
    env = {"CONFIGURATION_DIRECTORY": f"{tmp_path / 'missing'}:{confdir}"}
    assert resolve_config_path(None, env, system) == confdir / "config.yml"
    assert resolve_config_path(None, env | {"METASCHED_CONFIG": "/m.yml"}, system) == Path("/m.yml")
    assert resolve_config_path(Path("/x.yml"), env | {"METASCHED_CONFIG": "/m.yml"}, system) == Path("/x.yml")


def test_builtin_default_is_one_local_node() -> None:
    cfg = load_config(None, {})
    (dest,) = cfg.destinations
    assert (dest.id, dest.scheduler, dest.host, dest.is_local) == ("localhost", "node", "local", True)
    assert cfg.path is None and cfg.database is None and cfg.policies == ()


def test_config_import_stays_light() -> None:
    """rank loads the config on every call: importing it must not pull schema or network libraries."""
    code = "import sys, metasched.settings; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    heavy = {
        "pydantic",
        "fabric",
        "paramiko",
        "influxdb_client",
        "rich",
        "typer",
        "peewee",
        "difflib",
        "json",
    }
    assert loaded & heavy == set()


# --- the command --------------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    base: dict[str, str | None] = {
        "METASCHED_CONFIG": None,
        "CONFIGURATION_DIRECTORY": None,
        "INFLUXDB_HOST": None,
    }
    result = CliRunner().invoke(app, args, env=base | (env or {}))
    return result.exit_code, result.stdout, result.stderr


def test_cli_check_ok(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TEXT)
    code, out, _ = run_cli(["config", "check", "-c", str(path)])
    assert (code, out) == (0, f"{path}: ok (1 destination)\n")
    code, out, _ = run_cli(["config", "check", "--config", str(SEED2)])
    assert (code, out) == (0, f"{SEED2}: ok (5 destinations)\n")


def test_cli_check_refuses_bad_ledger_settings(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TEXT + "rank:\n  ledger: 1\n  ledger_ttl: -5\n")
    code, out, err = run_cli(["config", "check", "-c", str(path)])
    assert (code, out) == (ExitCode.USAGE, "")
    assert err.splitlines() == [
        f"{path}: rank.ledger: must be true or false, got 1",
        f"{path}: rank.ledger_ttl: must be a number > 0, got -5",
    ]


def test_ledger_settings_default_on(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL_TEXT), {})
    assert (cfg.rank.ledger, cfg.rank.ledger_ttl) == (True, 1800.0)
    cfg = load_config(write(tmp_path, MINIMAL_TEXT + "rank: {ledger: false, ledger_ttl: 600}\n"), {})
    assert (cfg.rank.ledger, cfg.rank.ledger_ttl) == (False, 600.0)


def test_cli_check_problems_exit_2_on_stderr() -> None:
    path = FIXTURES / "many-problems.yml"
    code, out, err = run_cli(["config", "check", "-c", str(path)])
    expected = (FIXTURES / "many-problems.expected").read_text().replace("{FILE}", str(path))
    assert (code, out, err) == (ExitCode.USAGE, "", expected)


def test_cli_check_json(tmp_path: Path) -> None:
    code, out, _ = run_cli(
        ["config", "check", "-c", str(SEED2), "--json"], {"STATE_DIRECTORY": str(tmp_path)}
    )
    assert code == 0
    assert json.loads(out) == {
        "ok": True,
        "problems": [],
        "destinations": [
            "node-192.168.1.10",
            "node-192.168.1.11",
            "node-192.168.1.12",
            "sge",
            "apache_hadoop",
        ],
        "database": str(tmp_path / "metasched.db"),
    }
    missing = tmp_path / "missing.yml"
    code, out, err = run_cli(["config", "check", "--json"], {"METASCHED_CONFIG": str(missing)})
    problem = f"{missing}: cannot read: No such file or directory"
    assert code == ExitCode.USAGE
    assert json.loads(out) == {"ok": False, "problems": [problem], "destinations": []}
    assert err == problem + "\n"


def test_cli_check_finds_the_systemd_config_directory(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL_TEXT)
    code, out, _ = run_cli(["config", "check"], {"CONFIGURATION_DIRECTORY": str(tmp_path)})
    assert (code, out) == (0, f"{tmp_path / 'config.yml'}: ok (1 destination)\n")


def test_cli_check_help_in_a_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if k != "METASCHED_CONFIG"}
    res = subprocess.run(["metasched", "config", "check", "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0
    for option in ("--config", "--database", "--verbose", "--json"):
        assert option in res.stdout
