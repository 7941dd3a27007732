"""Configuration: the YAML file (and the seed-2 JSON cluster file) as typed, validated dataclasses.

Kept free of heavy imports (only ``yaml`` and the standard library): ``rank`` loads the config on
every call, so validation is a small hand-written checker rather than a schema library. It collects
every problem (``FILE: key.path: message``) before raising, so one ``config check`` shows them all.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import yaml

from metasched.domain.errors import ConfigError

SchedulerName = Literal["slurm", "node", "sge", "htcondor", "yarn"]
HostKeyPolicy = Literal["strict", "accept-new"]
LOCAL_HOST = "local"

SCHEDULERS: tuple[str, ...] = ("slurm", "node", "sge", "htcondor", "yarn")
HOST_KEY_POLICIES: tuple[str, ...] = ("strict", "accept-new")
POLICY_NAMES: tuple[str, ...] = ("exclusive", "best_effort", "shared", "dynamic")
SYSTEM_CONFIG = Path("/etc/metasched/config.yml")
DEFAULT_DESTINATION_ID = "localhost"
ENV_LABEL = "environment"  # the FILE part of problems found in INFLUXDB_* variables
CREDENTIAL_PASSWORD = "influxdb-password"  # file names looked up in $CREDENTIALS_DIRECTORY
CREDENTIAL_TOKEN = "influxdb-token"
CREDENTIAL_SERVE_TOKEN = "serve-token"  # bearer token of `metasched serve`
CREDENTIALS_VARS = ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY")  # expanded in file paths
SERVE_ENDPOINTS: tuple[str, ...] = (
    "/healthz",
    "/metrics",
    "/v1/status",
    "/v1/rank",
    "/process_data",
    "/docs",
    "/openapi.json",
)

# Seed-2 scheduler names (case-insensitive) -> adapter names.
SEED2_SCHEDULERS: Mapping[str, str] = MappingProxyType(
    {
        "sge": "sge",
        "son of grid engine": "sge",
        "grid engine": "sge",
        "apache hadoop": "yarn",
        "hadoop": "yarn",
        "yarn": "yarn",
        "slurm": "slurm",
        "htcondor": "htcondor",
        "condor": "htcondor",
    }
)


SEED2_NAMES = "Apache Hadoop, HTCondor, Hadoop, SGE, Slurm, YARN"  # the spellings the seed's docs use
SEED2_SSH_USER = "metascheduler"  # the seed's --ssh-user default: its cluster files assume that login


@dataclass(frozen=True, slots=True)
class SSHSettings:
    """How to reach a host. Top-level ``ssh:`` gives defaults; a destination may override any field."""

    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts of the running user
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    host_key_policy: HostKeyPolicy = "strict"
    port: int = 22


@dataclass(frozen=True, slots=True)
class SGESettings:
    """Where the Grid Engine binaries and cell live on the head node."""

    bin_dir: str | None = None  # None: rely on PATH
    root: str | None = None  # SGE_ROOT
    cell: str | None = None  # SGE_CELL


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    id: str  # the TPV destination id
    scheduler: SchedulerName
    host: str  # hostname/IP, or "local"
    ssh: SSHSettings  # merged: defaults + this destination's overrides (port lives here)
    env: dict[str, str] = field(default_factory=dict)
    latitude: float | None = None
    longitude: float | None = None
    object_store: str | None = None  # id of the object store co-located with this destination
    # Other names the same destination has in metric sources (gxadmin uses the TPV id).
    runner: str | None = None
    vhost: str | None = None  # AMQP vhost used by htcondor_cluster_usage
    sge: SGESettings = field(default_factory=SGESettings)
    yarn_url: str | None = None  # ResourceManager REST base URL as seen from the head node
    # yarn.nodemanager.local-dirs on the NodeManagers (enforcement reads the container pid files there)
    yarn_local_dirs: tuple[str, ...] = ()
    enabled: bool = True

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL_HOST


@dataclass(frozen=True, slots=True)
class CollectSettings:
    fanout: int = 32  # destinations collected concurrently
    lock_timeout: float = 5.0  # seconds a second collect waits for a running one before giving up
    interval: float = 60.0  # serve: seconds between collect cycles
    jitter: float = 0.1  # serve: random share of the interval added/taken per wait, and first-cycle delay
    history_days: int = 90  # finished-job history kept this long


@dataclass(frozen=True, slots=True)
class RankSettings:
    max_state_age: float = 300.0  # seconds; older collected state counts as unknown
    weights: dict[str, float] = field(default_factory=dict)  # see metasched.rank.model.DEFAULT_WEIGHTS
    ledger: bool = True  # record each answer's placement and count recent ones as queued demand
    ledger_ttl: float = 1800.0  # seconds; an in-flight placement collect never saw stops counting


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    """InfluxDB connection; filled from the config or the seed's INFLUXDB_* environment variables."""

    url: str  # http(s)://host:port
    database: str | None = None  # 1.x
    username: str | None = None
    password: str | None = None  # resolved from password_file when given
    verify_ssl: bool = True
    version: Literal[1, 2] = 1
    token: str | None = None  # 2.x
    org: str | None = None  # 2.x
    bucket: str | None = None  # 2.x
    timeout: float = 10.0
    max_age: float = 900.0  # seconds; cached metrics older than this are flagged in rank warnings
    window: str = "15m"  # time bound of each query
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides of the defaults
    write_summary: bool = False  # collect writes its capacity summary as line protocol


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """``metasched serve``: where it listens and who may ask (see docs/serve.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; from token, token_file, $METASCHED_TOKEN or a credential
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    # Reachable without the token: health, metrics and the API docs carry no data.
    open_endpoints: tuple[str, ...] = ("/healthz", "/metrics", "/docs", "/openapi.json")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Seed-2 cluster policy over a node group (issue: policies)."""

    name: str  # exclusive | best_effort | shared | dynamic
    destinations: tuple[str, ...]  # destinations sharing the node group
    high_priority: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    enforce: bool = False
    nice: int = 10
    nodes: tuple[str, ...] = ()  # `node` destinations (hosts) the group shares; enforcement acts there
    sudo: bool = False  # enforcement prefixes renice with `sudo -n` (needed to lower a nice value)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    database: str | None  # None: the default location (see default_database_url)
    ssh: SSHSettings
    destinations: tuple[DestinationConfig, ...]
    collect: CollectSettings = field(default_factory=CollectSettings)
    rank: RankSettings = field(default_factory=RankSettings)
    influxdb: InfluxSettings | None = None
    objectstores: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (lat, lon)
    policies: tuple[PolicyConfig, ...] = ()
    serve: ServeSettings = field(default_factory=ServeSettings)

    def destination(self, dest_id: str) -> DestinationConfig | None:
        for d in self.destinations:
            if d.id == dest_id:
                return d
        return None


# ---------------------------------------------------------------------------------------------
# Public entry points


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
    checker = _Checker(ENV_LABEL)
    influx = _influx_from_env(checker, env, read_secrets)
    serve = _serve(checker, None, Path.cwd(), env, read_secrets)
    if checker.problems:
        raise ConfigError(checker.problems)
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
    checker = _Checker(str(path))
    data = _read_document(checker, path)
    if checker.problems:
        raise ConfigError(checker.problems)
    base_dir = path.absolute().parent
    config = _build_config(checker, data, path, base_dir, env, read_secrets)
    if checker.problems or config is None:
        raise ConfigError(checker.problems or [f"{path}: invalid configuration"])
    return config


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What ``config check`` shows: the file checked, the config when usable, every problem."""

    label: str  # the file, or "built-in default"
    config: Config | None
    problems: list[str]


def inspect_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> ConfigReport:
    """``load_config`` plus the checks only the consumers can make (rank weight names, metric overrides).

    Those modules are imported here, lazily, because only ``config check`` needs them; the other
    commands report such problems when they use the values.
    """
    label = str(path) if path is not None else "built-in default"
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        return ConfigReport(label, None, list(exc.problems))
    return ConfigReport(label, config, [f"{label}: {p}" for p in _consumer_problems(config)])


def _consumer_problems(config: Config) -> list[str]:
    from metasched.domain.errors import InputError

    problems: list[str] = []
    try:
        from metasched.rank.model import make_weights
    except ModuleNotFoundError:  # rank not installed in this build: nothing to ask
        pass
    else:
        try:
            make_weights(("rank.weights", config.rank.weights))
        except InputError as exc:
            problems.append(str(exc))
    if config.influxdb is not None:
        try:
            from metasched.metrics.measurements import specs_from_overrides
        except ModuleNotFoundError:
            pass
        else:
            problems.extend(specs_from_overrides(config.influxdb.measurements)[1])
    return problems


def check_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of a config file as ``FILE: key.path: message`` lines (empty when valid)."""
    return inspect_config(path, env).problems


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


# ---------------------------------------------------------------------------------------------
# Problem collection and typed readers


class _Checker:
    """Collects problems in document order; the readers return a default after recording one."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{self.label}: {path}: {message}" if path else f"{self.label}: {message}")

    def mapping(self, value: Any, path: str, what: str = "a mapping") -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"must be {what}, got {_describe(value)}")
            return None
        bad = [k for k in value if not isinstance(k, str)]
        for key in bad:
            self.add(path, f"keys must be strings, got {_describe(key)}")
        return None if bad else value

    def keys(
        self, m: Mapping[str, Any], path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> None:
        for key in m:
            if key not in allowed:
                self.add(_join(path, key), f"unknown key{_suggest(key, allowed)}")
        for key in required:
            if key not in m or m[key] is None:
                self.add(_join(path, key), "is required")

    def string(
        self, m: Mapping[str, Any], key: str, path: str, default: str | None = None, *, safe: bool = False
    ) -> str | None:
        """A non-empty string; ``safe`` also refuses whitespace and a leading '-' (hosts, users, ids
        that end up on a command line)."""
        if key not in m or m[key] is None:
            return default
        value = m[key]
        p = _join(path, key)
        if not isinstance(value, str):
            self.add(p, f"must be a string, got {_describe(value)}")
            return default
        if not value.strip():
            self.add(p, "must not be empty")
            return default
        if _CONTROL.search(value):
            self.add(p, "must not contain control characters")
            return default
        if safe and (value.startswith("-") or any(ch.isspace() for ch in value)):
            self.add(p, f"must not contain whitespace or start with '-', got {value!r}")
            return default
        return value

    def integer(
        self, m: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int | None
    ) -> int:
        if key not in m or m[key] is None:
            return default
        value = m[key]
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and lo <= value
            and (hi is None or value <= hi)
        ):
            return value
        rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        self.add(_join(path, key), f"must be an integer {rng}, got {_describe(value)}")
        return default

    def number(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        default: float,
        lo: float | None = None,
        hi: float | None = None,
        *,
        positive: bool = False,
    ) -> float:
        value = self.opt_number(m, key, path, lo, hi, positive=positive)
        return default if value is None else value

    def opt_number(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        positive: bool = False,
    ) -> float | None:
        if key not in m or m[key] is None:
            return None
        value = m[key]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            v = float(value)
            if (not positive or v > 0) and (lo is None or v >= lo) and (hi is None or v <= hi):
                return v
        if positive:
            rng = "> 0"
        elif lo is not None and hi is not None:
            rng = f"between {_num(lo)} and {_num(hi)}"
        elif lo is not None:
            rng = f">= {_num(lo)}"
        else:
            rng = ""
        self.add(_join(path, key), f"must be a number {rng}, got {_describe(value)}".replace("  ", " "))
        return None

    def boolean(self, m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        if key not in m or m[key] is None:
            return default
        value = m[key]
        if isinstance(value, bool):
            return value
        self.add(_join(path, key), f"must be true or false, got {_describe(value)}")
        return default

    def choice(
        self, m: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...], default: str | None
    ) -> str | None:
        if key not in m or m[key] is None:
            return default
        value = m[key]
        if isinstance(value, str) and value in choices:
            return value
        self.add(_join(path, key), f"must be one of {', '.join(choices)}, got {_describe(value)}")
        return default

    def items(self, value: Any, path: str) -> Iterator[tuple[int, str, Any]]:
        """Index, path and item of a list (nothing, after a problem, when it is not a list)."""
        if value is None:
            return
        if not isinstance(value, list):
            self.add(path, f"must be a list, got {_describe(value)}")
            return
        for i, item in enumerate(value):
            yield i, f"{path}[{i}]", item


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WINDOW = re.compile(r"[1-9][0-9]*[smhdw]")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    """Name the likely intended key; difflib is imported only when there is a mistake to explain."""
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(allowed)})"


def _local_path(value: str | None, base_dir: Path, env: Mapping[str, str]) -> str | None:
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


# ---------------------------------------------------------------------------------------------
# Reading the file


def _duplicate_checking_loader() -> type[yaml.SafeLoader]:
    base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type,misc]
        """Refuses a key given twice in one mapping; plain YAML silently keeps the last one."""

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeConstructor reports it itself
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
            result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
            return result

    return Loader


class _DuplicateKey(ValueError):
    pass


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_document(checker: _Checker, path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        checker.add("", f"cannot read: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        checker.add("", "cannot read: not UTF-8 text")
        return None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        import json

        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except _DuplicateKey as exc:
            checker.add("", str(exc))
            return None
        except json.JSONDecodeError as exc:
            if path.suffix.lower() == ".json":
                checker.add("", f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}")
                return None
            # Not JSON after all: a YAML flow mapping; the YAML parser has the last word.
    try:
        data = yaml.load(text, Loader=_duplicate_checking_loader())  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        checker.add("", f"{where}invalid YAML: {exc.problem}{context}")
        return None
    except yaml.YAMLError as exc:
        checker.add("", f"invalid YAML: {exc}")
        return None
    if data is None:
        checker.add("", "is empty (expected a mapping of settings)")
    return data


# ---------------------------------------------------------------------------------------------
# The YAML form

_TOP_KEYS = (
    "database",
    "ssh",
    "collect",
    "rank",
    "influxdb",
    "objectstores",
    "destinations",
    "policies",
    "serve",
    "cluster",  # the seed-2 JSON form
)
_SSH_KEYS = (
    "user",
    "key_file",
    "known_hosts",
    "connect_timeout",
    "command_timeout",
    "host_key_policy",
    "port",
)
_DEST_KEYS = (
    "id",
    "scheduler",
    "host",
    *_SSH_KEYS,
    "env",
    "latitude",
    "longitude",
    "object_store",
    "runner",
    "vhost",
    "sge",
    "yarn_url",
    "yarn_local_dirs",
    "enabled",
)
_INFLUX_KEYS = (
    "url",
    "version",
    "database",
    "username",
    "password",
    "password_file",
    "token",
    "token_file",
    "org",
    "bucket",
    "verify_ssl",
    "timeout",
    "max_age",
    "window",
    "measurements",
    "write_summary",
)
_POLICY_KEYS = ("name", "destinations", "high_priority", "weights", "enforce", "nice", "nodes", "sudo")
_SERVE_KEYS = ("host", "port", "token", "token_file", "max_body_bytes", "open_endpoints")


def _build_config(
    c: _Checker, data: Any, path: Path, base_dir: Path, env: Mapping[str, str], read_secrets: bool
) -> Config | None:
    top = c.mapping(data, "", "a mapping of settings")
    if top is None:
        return None
    c.keys(top, "", _TOP_KEYS)
    database = _database(c, top, base_dir, env)
    ssh = (
        _ssh(c, top.get("ssh"), "ssh", SSHSettings(), base_dir, env)
        if top.get("ssh") is not None
        else SSHSettings()
    )
    collect = _collect(c, top.get("collect"))
    rank = _rank(c, top.get("rank"))
    if top.get("influxdb") is not None:
        influx = _influx(c, top["influxdb"], base_dir, env, read_secrets)
    else:
        env_checker = _Checker(ENV_LABEL)
        influx = _influx_from_env(env_checker, env, read_secrets)
        c.problems.extend(env_checker.problems)
    objectstores = _objectstores(c, top.get("objectstores"))
    serve = _serve(c, top.get("serve"), base_dir, env, read_secrets)

    destinations: list[tuple[str, DestinationConfig]] = []  # (problem path of the id, destination)
    ids: list[tuple[str, str]] = []  # every id given, even of otherwise broken entries: (path, id)
    for _, p, raw in c.items(top.get("destinations"), "destinations"):
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            ids.append((f"{p}.id", raw["id"]))
        dest = _destination(c, raw, p, ssh, base_dir, env)
        if dest is not None:
            destinations.append((f"{p}.id", dest))
    seed_policy: tuple[str, PolicyConfig] | None = None
    if top.get("cluster") is not None:
        seed_dests, seed_policy = _seed2_cluster(c, top["cluster"], ssh)
        destinations.extend(seed_dests)
        ids.extend((p, d.id) for p, d in seed_dests)

    first_seen: dict[str, str] = {}
    for id_path, dest_id in ids:
        if dest_id in first_seen:
            c.add(id_path, f"duplicate destination id {dest_id!r} (also {first_seen[dest_id]})")
        else:
            first_seen[dest_id] = id_path
    dests_by_id = {d.id: d for _, d in destinations}

    policies: list[tuple[str, PolicyConfig]] = []
    for _, p, raw in c.items(top.get("policies"), "policies"):
        policy = _policy(c, raw, p, dests_by_id)
        if policy is not None:
            policies.append((p, policy))
    if seed_policy is not None:
        policies.append(seed_policy)
    _check_policy_overlap(c, policies)

    return Config(
        path=path,
        database=database,
        ssh=ssh,
        destinations=tuple(d for _, d in destinations),
        collect=collect,
        rank=rank,
        influxdb=influx,
        objectstores=objectstores,
        policies=tuple(p for _, p in policies),
        serve=serve,
    )


def _database(c: _Checker, top: Mapping[str, Any], base_dir: Path, env: Mapping[str, str]) -> str | None:
    value = c.string(top, "database", "")
    if value is None:
        return None
    if "://" not in value:
        return _local_path(value, base_dir, env)
    scheme, _, rest = value.partition("://")
    if scheme == "sqlite":
        db_path = rest[1:] if rest.startswith("/") else None
        if db_path is None or not db_path:
            c.add("database", f"sqlite URLs look like sqlite:///path, got {value!r}")
            return None
        if db_path != ":memory:" and not db_path.startswith("/") and "?" not in db_path:
            return _local_path(db_path, base_dir, env)  # relative to the config file, as a plain path
        return value
    if scheme in ("postgresql", "postgres"):
        return value
    c.add("database", f"must be a path, sqlite:///path or postgresql://user@host/db, got {value!r}")
    return None


def _ssh(
    c: _Checker, raw: Any, path: str, base: SSHSettings, base_dir: Path, env: Mapping[str, str]
) -> SSHSettings:
    """Reads the SSH keys of ``raw`` (the ``ssh:`` block or a destination) over ``base``."""
    m = c.mapping(raw, path)
    if m is None:
        return base
    if path == "ssh":
        c.keys(m, path, _SSH_KEYS)
    user = c.string(m, "user", path, safe=True)
    key_file = _local_path(c.string(m, "key_file", path), base_dir, env)
    known_hosts = _local_path(c.string(m, "known_hosts", path), base_dir, env)
    policy = c.choice(m, "host_key_policy", path, HOST_KEY_POLICIES, None)
    return SSHSettings(
        user=user if user is not None else base.user,
        key_file=key_file if key_file is not None else base.key_file,
        known_hosts=known_hosts if known_hosts is not None else base.known_hosts,
        connect_timeout=c.number(m, "connect_timeout", path, base.connect_timeout, positive=True),
        command_timeout=c.number(m, "command_timeout", path, base.command_timeout, positive=True),
        host_key_policy=cast(HostKeyPolicy, policy) if policy is not None else base.host_key_policy,
        port=c.integer(m, "port", path, base.port, 1, 65535),
    )


def _collect(c: _Checker, raw: Any) -> CollectSettings:
    d = CollectSettings()
    if raw is None:
        return d
    m = c.mapping(raw, "collect")
    if m is None:
        return d
    c.keys(m, "collect", ("fanout", "lock_timeout", "interval", "jitter", "history_days"))
    return CollectSettings(
        fanout=c.integer(m, "fanout", "collect", d.fanout, 1, 1024),
        lock_timeout=c.number(m, "lock_timeout", "collect", d.lock_timeout, lo=0),
        interval=c.number(m, "interval", "collect", d.interval, positive=True),
        jitter=c.number(m, "jitter", "collect", d.jitter, lo=0, hi=1),
        history_days=c.integer(m, "history_days", "collect", d.history_days, 1, None),
    )


def _rank(c: _Checker, raw: Any) -> RankSettings:
    d = RankSettings()
    if raw is None:
        return d
    m = c.mapping(raw, "rank")
    if m is None:
        return d
    c.keys(m, "rank", ("max_state_age", "weights", "ledger", "ledger_ttl"))
    weights: dict[str, float] = {}
    if m.get("weights") is not None:
        wm = c.mapping(m["weights"], "rank.weights")
        for name in wm or {}:
            value = c.opt_number(wm or {}, name, "rank.weights", lo=0)
            if value is not None:
                weights[name] = value
    return RankSettings(
        max_state_age=c.number(m, "max_state_age", "rank", d.max_state_age, positive=True),
        weights=weights,
        ledger=c.boolean(m, "ledger", "rank", d.ledger),
        ledger_ttl=c.number(m, "ledger_ttl", "rank", d.ledger_ttl, positive=True),
    )


def _objectstores(c: _Checker, raw: Any) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    if raw is None:
        return out
    m = c.mapping(raw, "objectstores")
    for os_id, entry in (m or {}).items():
        p = f"objectstores.{os_id}"
        em = c.mapping(entry, p)
        if em is None:
            continue
        c.keys(em, p, ("latitude", "longitude"), required=("latitude", "longitude"))
        lat = c.opt_number(em, "latitude", p, -90, 90)
        lon = c.opt_number(em, "longitude", p, -180, 180)
        if lat is not None and lon is not None:
            out[os_id] = (lat, lon)
    return out


def _destination(
    c: _Checker, raw: Any, path: str, ssh: SSHSettings, base_dir: Path, environ: Mapping[str, str]
) -> DestinationConfig | None:
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.keys(m, path, _DEST_KEYS, required=("id", "scheduler", "host"))
    dest_id = c.string(m, "id", path)
    scheduler = c.choice(m, "scheduler", path, SCHEDULERS, None)
    host = c.string(m, "host", path, safe=True)
    dest_ssh = _ssh(c, m, path, ssh, base_dir, environ)
    env: dict[str, str] = {}
    if m.get("env") is not None:
        em = c.mapping(m["env"], f"{path}.env")
        for name, value in (em or {}).items():
            if not _ENV_NAME.fullmatch(name):
                c.add(f"{path}.env.{name}", "is not a valid environment variable name")
            elif isinstance(value, str | int | float) and not isinstance(value, bool):
                env[name] = str(value)
            else:
                c.add(f"{path}.env.{name}", f"must be a string, got {_describe(value)}")
    lat = c.opt_number(m, "latitude", path, -90, 90)
    lon = c.opt_number(m, "longitude", path, -180, 180)
    if (m.get("latitude") is None) != (m.get("longitude") is None):
        missing = "longitude" if m.get("longitude") is None else "latitude"
        c.add(_join(path, missing), "is required when the other coordinate is given")
    sge = SGESettings()
    if m.get("sge") is not None:
        sm = c.mapping(m["sge"], f"{path}.sge")
        if sm is not None:
            c.keys(sm, f"{path}.sge", ("bin_dir", "root", "cell"))
            sge = SGESettings(
                bin_dir=c.string(sm, "bin_dir", f"{path}.sge"),
                root=c.string(sm, "root", f"{path}.sge"),
                cell=c.string(sm, "cell", f"{path}.sge", safe=True),
            )
        if scheduler is not None and scheduler != "sge":
            c.add(f"{path}.sge", f"only applies to scheduler sge (this destination is {scheduler})")
    yarn_url = c.string(m, "yarn_url", path)
    if yarn_url is not None:
        if not yarn_url.startswith(("http://", "https://")):
            c.add(f"{path}.yarn_url", f"must start with http:// or https://, got {yarn_url!r}")
        if scheduler is not None and scheduler != "yarn":
            c.add(f"{path}.yarn_url", f"only applies to scheduler yarn (this destination is {scheduler})")
    local_dirs: list[str] = []
    for _, dp, item in c.items(m.get("yarn_local_dirs"), f"{path}.yarn_local_dirs"):
        if not isinstance(item, str) or not item.startswith("/") or _CONTROL.search(item):
            c.add(dp, f"must be an absolute directory path, got {_describe(item)}")
        else:
            local_dirs.append(item)
    if m.get("yarn_local_dirs") is not None and scheduler is not None and scheduler != "yarn":
        c.add(f"{path}.yarn_local_dirs", f"only applies to scheduler yarn (this destination is {scheduler})")
    enabled = c.boolean(m, "enabled", path, True)
    object_store = c.string(m, "object_store", path)
    runner = c.string(m, "runner", path)
    vhost = c.string(m, "vhost", path)
    if dest_id is None or scheduler is None or host is None:
        return None
    return DestinationConfig(
        id=dest_id,
        scheduler=cast(SchedulerName, scheduler),
        host=host,
        ssh=dest_ssh,
        env=env,
        latitude=lat if lon is not None else None,
        longitude=lon if lat is not None else None,
        object_store=object_store,
        runner=runner,
        vhost=vhost,
        sge=sge,
        yarn_url=yarn_url,
        yarn_local_dirs=tuple(local_dirs),
        enabled=enabled,
    )


def _id_list(c: _Checker, raw: Any, path: str, known: Mapping[str, DestinationConfig]) -> list[str]:
    ids: list[str] = []
    for _, p, item in c.items(raw, path):
        if not isinstance(item, str):
            c.add(p, f"must be a destination id, got {_describe(item)}")
        elif item not in known:
            c.add(p, f"unknown destination {item!r}")
        elif item in ids:
            c.add(p, f"{item!r} is listed twice")
        else:
            ids.append(item)
    return ids


def _policy(c: _Checker, raw: Any, path: str, known: Mapping[str, DestinationConfig]) -> PolicyConfig | None:
    m = c.mapping(raw, path)
    if m is None:
        return None
    c.keys(m, path, _POLICY_KEYS, required=("name", "destinations"))
    name = c.choice(m, "name", path, POLICY_NAMES, None)
    dests = _id_list(c, m.get("destinations"), f"{path}.destinations", known)
    if isinstance(m.get("destinations"), list) and not m["destinations"]:
        c.add(f"{path}.destinations", "must name at least one destination")
    nodes = _id_list(c, m.get("nodes"), f"{path}.nodes", known)
    for i, node_id in enumerate(nodes):
        if known[node_id].scheduler != "node":
            c.add(f"{path}.nodes[{i}]", f"{node_id!r} is not a node destination")
    high = c.string(m, "high_priority", path)
    if high is not None and high not in dests:
        c.add(f"{path}.high_priority", f"{high!r} is not one of this policy's destinations")
        high = None
    if name == "best_effort" and m.get("high_priority") is None:
        c.add(f"{path}.high_priority", "is required for best_effort")
    weights: dict[str, float] = {}
    if m.get("weights") is not None:
        wm = c.mapping(m["weights"], f"{path}.weights")
        for dest_id in wm or {}:
            if dest_id not in dests:
                c.add(f"{path}.weights.{dest_id}", "is not one of this policy's destinations")
            value = c.opt_number(wm or {}, dest_id, f"{path}.weights", 0, 100)
            if value is not None:
                weights[dest_id] = value
        _check_weight_sum(c, f"{path}.weights", wm, weights)
    if name is None:
        return None
    return PolicyConfig(
        name=name,
        destinations=tuple(dests),
        high_priority=high,
        weights=weights,
        enforce=c.boolean(m, "enforce", path, False),
        nice=c.integer(m, "nice", path, 10, -20, 19),
        nodes=tuple(nodes),
        sudo=c.boolean(m, "sudo", path, False),
    )


def _check_weight_sum(
    c: _Checker, path: str, raw: Mapping[str, Any] | None, weights: dict[str, float], what: str = "must"
) -> None:
    """Seed-2 semantics: the weights of one node group are percentages of it (checked once each is valid)."""
    if raw is not None and raw and len(weights) == len(raw):
        total = sum(weights.values())
        if abs(total - 100) > 1e-6:
            c.add(path, f"{what} sum to 100, got {_num(round(total, 6))}")


def _check_policy_overlap(c: _Checker, policies: list[tuple[str, PolicyConfig]]) -> None:
    """A destination shares nodes with one group only; two policies over it would contradict each other."""
    owner: dict[str, str] = {}
    for path, policy in policies:
        for dest_id in policy.destinations:
            if dest_id in owner:
                c.add(f"{path}.destinations", f"{dest_id!r} is already governed by {owner[dest_id]}")
            else:
                owner[dest_id] = path


# ---------------------------------------------------------------------------------------------
# serve


def _serve(
    c: _Checker, raw: Any, base_dir: Path, env: Mapping[str, str], read_secrets: bool
) -> ServeSettings:
    """The ``serve:`` block. The token: ``token``, else ``token_file``, else $METASCHED_TOKEN, else the
    systemd credential ``serve-token``; none of them means no authentication."""
    d = ServeSettings()
    m: dict[str, Any] = {}
    if raw is not None:
        m = c.mapping(raw, "serve") or {}
        c.keys(m, "serve", _SERVE_KEYS)
    p = "serve"
    literal = c.string(m, "token", p)
    file_path = _local_path(c.string(m, "token_file", p), base_dir, env)
    token: str | None = None
    if literal is not None and file_path is not None:
        c.add(f"{p}.token_file", "give token or token_file, not both")
    if literal is not None:
        token = literal
    elif file_path is not None:
        token = _read_secret(c, file_path, f"{p}.token_file") if read_secrets else None
        if read_secrets and token is not None and not token.strip():
            c.add(f"{p}.token_file", f"{file_path} is empty")
            token = None
    elif read_secrets:
        token = env.get("METASCHED_TOKEN") or _credential(env, CREDENTIAL_SERVE_TOKEN)
    open_endpoints = d.open_endpoints
    if m.get("open_endpoints") is not None:
        chosen: list[str] = []
        for _, ip, item in c.items(m["open_endpoints"], f"{p}.open_endpoints"):
            if item not in SERVE_ENDPOINTS:
                c.add(ip, f"must be one of {', '.join(SERVE_ENDPOINTS)}, got {_describe(item)}")
            elif item not in chosen:
                chosen.append(item)
        open_endpoints = tuple(chosen)
    return ServeSettings(
        host=c.string(m, "host", p, d.host, safe=True) or d.host,
        port=c.integer(m, "port", p, d.port, 1, 65535),
        token=token.strip() if token else None,
        max_body_bytes=c.integer(m, "max_body_bytes", p, d.max_body_bytes, 1024, None),
        open_endpoints=open_endpoints,
    )


# ---------------------------------------------------------------------------------------------
# InfluxDB


def _read_secret(c: _Checker, file_path: str, problem_path: str) -> str | None:
    """A systemd-credential style file: the whole content minus the trailing newline."""
    try:
        return Path(file_path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        c.add(problem_path, f"cannot read {file_path}: {reason}")
        return None


def _credential(env: Mapping[str, str], name: str) -> str | None:
    """$CREDENTIALS_DIRECTORY/<name> when systemd passed it (LoadCredential=)."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _influx(
    c: _Checker, raw: Any, base_dir: Path, env: Mapping[str, str], read_secrets: bool
) -> InfluxSettings | None:
    p = "influxdb"
    m = c.mapping(raw, p)
    if m is None:
        return None
    c.keys(m, p, _INFLUX_KEYS, required=("url",))
    url = c.string(m, "url", p)
    if url is not None and not url.startswith(("http://", "https://")):
        c.add(f"{p}.url", f"must start with http:// or https://, got {url!r}")
        url = None
    version = m.get("version", 1)
    if version not in (1, 2) or isinstance(version, bool):
        c.add(f"{p}.version", f"must be 1 or 2, got {_describe(version)}")
        version = 1
    secrets: dict[str, str | None] = {}
    for key, file_key, credential in (
        ("password", "password_file", CREDENTIAL_PASSWORD),
        ("token", "token_file", CREDENTIAL_TOKEN),
    ):
        literal = c.string(m, key, p)
        file_path = _local_path(c.string(m, file_key, p), base_dir, env)
        if literal is not None and file_path is not None:
            c.add(f"{p}.{file_key}", f"give {key} or {file_key}, not both")
        if literal is not None:
            secrets[key] = literal
        elif file_path is not None:
            secrets[key] = _read_secret(c, file_path, f"{p}.{file_key}") if read_secrets else None
        else:
            secrets[key] = _credential(env, credential) if read_secrets else None
    database = c.string(m, "database", p)
    org = c.string(m, "org", p)
    bucket = c.string(m, "bucket", p)
    if version == 1 and database is None and m.get("database") is None:
        c.add(f"{p}.database", "is required for InfluxDB 1.x")
    if version == 2:
        for key, value in (("org", org), ("bucket", bucket)):
            if value is None and m.get(key) is None:
                c.add(f"{p}.{key}", "is required for InfluxDB 2.x")
        if (
            m.get("token") is None
            and m.get("token_file") is None
            and read_secrets
            and secrets["token"] is None
        ):
            c.add(
                f"{p}.token",
                f"is required for InfluxDB 2.x (or token_file, or credential {CREDENTIAL_TOKEN})",
            )
    window = c.string(m, "window", p, "15m")
    if window is not None and not _WINDOW.fullmatch(window):
        c.add(f"{p}.window", f"must be a duration like 90s, 15m, 2h, 2d or 1w, got {window!r}")
        window = "15m"
    measurements = _measurements(c, m.get("measurements"), f"{p}.measurements")
    d = InfluxSettings(url="")  # for its defaults
    if url is None:
        return None
    return InfluxSettings(
        url=url.rstrip("/"),
        database=database,
        username=c.string(m, "username", p),
        password=secrets["password"],
        verify_ssl=c.boolean(m, "verify_ssl", p, True),
        version=cast(Literal[1, 2], version),
        token=secrets["token"],
        org=org,
        bucket=bucket,
        timeout=c.number(m, "timeout", p, d.timeout, positive=True),
        max_age=c.number(m, "max_age", p, d.max_age, positive=True),
        window=window or d.window,
        measurements=measurements,
        write_summary=c.boolean(m, "write_summary", p, False),
    )


def _measurements(c: _Checker, raw: Any, path: str) -> dict[str, dict[str, Any]]:
    """Shape only (name -> mapping of single values or of name mappings such as ``columns``); the metrics
    package knows the meaning and ``config check`` asks it (see ``inspect_config``)."""
    out: dict[str, dict[str, Any]] = {}
    if raw is None:
        return out
    m = c.mapping(raw, path)
    for name, overrides in (m or {}).items():
        om = c.mapping(overrides, f"{path}.{name}")
        if om is None:
            continue
        ok = True
        for key, value in om.items():
            vp = f"{path}.{name}.{key}"
            if isinstance(value, dict):
                vm = c.mapping(value, vp)
                bad = [k for k, v in (vm or {}).items() if not _is_scalar(v)]
                for k in bad:
                    c.add(f"{vp}.{k}", f"must be a single value, got {_describe(vm[k] if vm else None)}")
                ok = ok and vm is not None and not bad
            elif not _is_scalar(value):
                c.add(vp, f"must be a single value or a mapping, got {_describe(value)}")
                ok = False
        if ok:
            out[name] = dict(om)
    return out


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _env_bool(c: _Checker, env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    c.add(name, f"must be true or false, got {raw!r}")
    return default


def _influx_from_env(c: _Checker, env: Mapping[str, str], read_secrets: bool) -> InfluxSettings | None:
    """The seed's set_env.sh variables: INFLUXDB_HOST (+ PORT, USERNAME, PASSWORD, DATABASE); TLS on."""
    host = env.get("INFLUXDB_HOST", "").strip()
    if not host:
        return None
    port_text = env.get("INFLUXDB_PORT", "").strip() or "8086"
    port = int(port_text) if port_text.isdigit() else 0
    if not 1 <= port <= 65535:
        c.add("INFLUXDB_PORT", f"must be an integer 1-65535, got {port_text!r}")
        port = 8086
    scheme = "https" if _env_bool(c, env, "INFLUXDB_SSL", True) else "http"
    if "://" in host:
        url = host.rstrip("/")
    else:
        url = f"{scheme}://[{host}]:{port}" if host.count(":") > 1 else f"{scheme}://{host}:{port}"  # IPv6
    password = env.get("INFLUXDB_PASSWORD") or None
    if password is None and read_secrets:
        password = _credential(env, CREDENTIAL_PASSWORD)
    return InfluxSettings(
        url=url,
        database=env.get("INFLUXDB_DATABASE") or None,
        username=env.get("INFLUXDB_USERNAME") or None,
        password=password,
        verify_ssl=_env_bool(c, env, "INFLUXDB_VERIFY_SSL", True),
    )


# ---------------------------------------------------------------------------------------------
# Seed 2: {"cluster": {"policy": {...}, "nodes": [...], "schedulers": [...]}}


def slug(name: str) -> str:
    """A scheduler's display name as a destination id: "Apache Hadoop" -> "apache_hadoop"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _seed2_policy_name(name: str) -> str:
    """The seed accepted free text; "Best Effort" and "best-effort" mean best_effort."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _seed2_cluster(
    c: _Checker, raw: Any, ssh: SSHSettings
) -> tuple[list[tuple[str, DestinationConfig]], tuple[str, PolicyConfig] | None]:
    p = "cluster"
    m = c.mapping(raw, p)
    if m is None:
        return [], None
    c.keys(m, p, ("policy", "nodes", "schedulers"), required=("nodes", "schedulers"))
    if ssh.user is None:
        ssh = replace(ssh, user=SEED2_SSH_USER)

    nodes: list[tuple[str, int] | None] = []
    for _, np_, node in c.items(m.get("nodes"), f"{p}.nodes"):
        nm = c.mapping(node, np_)
        if nm is None:
            nodes.append(None)
            continue
        c.keys(nm, np_, ("ip", "port"), required=("ip",))
        ip = c.string(nm, "ip", np_, safe=True)
        port = c.integer(nm, "port", np_, ssh.port, 1, 65535)
        nodes.append((ip, port) if ip is not None else None)
    ip_counts: dict[str, int] = {}
    for n in nodes:
        if n is not None:
            ip_counts[n[0]] = ip_counts.get(n[0], 0) + 1

    out: list[tuple[str, DestinationConfig]] = []
    for i, n in enumerate(nodes):
        if n is None:
            continue
        ip, port = n
        node_id = f"node-{ip}-{port}" if ip_counts[ip] > 1 else f"node-{ip}"
        out.append(
            (
                f"{p}.nodes[{i}].ip",
                DestinationConfig(id=node_id, scheduler="node", host=ip, ssh=replace(ssh, port=port)),
            )
        )
    node_ids = [d.id for _, d in out]

    sched_ids: list[str | None] = []
    weights: dict[str, float] = {}
    raw_weights: dict[str, Any] = {}
    for _, sp, sched in c.items(m.get("schedulers"), f"{p}.schedulers"):
        sm = c.mapping(sched, sp)
        if sm is None:
            sched_ids.append(None)
            continue
        c.keys(sm, sp, ("name", "master", "weight"), required=("name", "master"))
        name = c.string(sm, "name", sp)
        scheduler = SEED2_SCHEDULERS.get(name.strip().lower()) if name else None
        if name is not None and scheduler is None:
            c.add(f"{sp}.name", f"unknown scheduler {name!r} (known: {SEED2_NAMES})")
        dest_id = slug(name) if name else ""
        if name is not None and not dest_id:
            c.add(f"{sp}.name", f"cannot make a destination id from {name!r}")
        master = sm.get("master")
        master_node: tuple[str, int] | None = None
        if master is not None:
            if isinstance(master, int) and not isinstance(master, bool) and 0 <= master < len(nodes):
                master_node = nodes[master]
            else:
                c.add(
                    f"{sp}.master",
                    f"must be an index into cluster.nodes (0-{len(nodes) - 1}), got {_describe(master)}",
                )
        weight = c.opt_number(sm, "weight", sp, 0, 100)
        if not dest_id:
            sched_ids.append(None)
            continue
        sched_ids.append(dest_id)
        if "weight" in sm:
            raw_weights[dest_id] = sm["weight"]
            if weight is not None:
                weights[dest_id] = weight
        if scheduler is not None and master_node is not None:
            host, port = master_node
            dest = DestinationConfig(
                id=dest_id, scheduler=cast(SchedulerName, scheduler), host=host, ssh=replace(ssh, port=port)
            )
            out.append((f"{sp}.name", dest))
    _check_weight_sum(c, f"{p}.schedulers", raw_weights, weights, "weights must")

    if m.get("policy") is None:
        return out, None
    pp = f"{p}.policy"
    pm = c.mapping(m["policy"], pp)
    if pm is None:
        return out, None
    c.keys(pm, pp, ("name", "high_priority", "enforce", "nice"), required=("name",))
    raw_name = c.string(pm, "name", pp)
    name = _seed2_policy_name(raw_name) if raw_name else None
    if raw_name is not None and name not in POLICY_NAMES:
        c.add(f"{pp}.name", f"must be one of {', '.join(POLICY_NAMES)}, got {raw_name!r}")
        name = None
    hp = pm.get("high_priority")
    high: str | None = None
    if hp is not None:
        if isinstance(hp, int) and not isinstance(hp, bool) and 0 <= hp < len(sched_ids):
            high = sched_ids[hp]
        else:
            c.add(
                f"{pp}.high_priority",
                f"must be an index into cluster.schedulers (0-{len(sched_ids) - 1}), got {_describe(hp)}",
            )
    elif name == "best_effort":
        c.add(f"{pp}.high_priority", "is required for best_effort")
    if name is None:
        return out, None
    policy = PolicyConfig(
        name=name,
        destinations=tuple(s for s in sched_ids if s is not None),
        high_priority=high,
        weights=weights,
        enforce=c.boolean(pm, "enforce", pp, False),
        nice=c.integer(pm, "nice", pp, 10, -20, 19),
        nodes=tuple(node_ids),
    )
    return out, (pp, policy)
