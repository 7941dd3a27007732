"""The whole file's form, and how a decoded file becomes the ``Config`` the commands use.

Decoding (``metasched.settings.walker``) checks each value against its type; the rules here span
fields (a coordinate without the other, keys that only apply to one scheduler, policies naming
destinations) and resolve what the environment supplies: relative paths, secrets, INFLUXDB_*.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import replace

from metasched.domain.errors import ConfigError
from metasched.settings.database_url import parse_url
from metasched.settings.environment import (
    CREDENTIAL_PASSWORD,
    CREDENTIAL_SERVE_TOKEN,
    CREDENTIAL_TOKEN,
    credential,
    influx_from_env,
    local_path,
    read_secret,
)
from metasched.settings.models import (
    CollectSettings,
    Config,
    DestinationConfig,
    DestinationEntry,
    InfluxSettings,
    ObjectStoreEntry,
    PolicyConfig,
    RankSettings,
    Section,
    ServeSettings,
    SSHSettings,
)
from metasched.settings.problems import KeyPath, Problem, dotted, number
from metasched.settings.seed import ClusterFile, seed_cluster
from metasched.settings.types import Text
from metasched.settings.walker import Decoded

_SSH_FIELDS = tuple(f.name for f in msgspec.structs.fields(SSHSettings))
_SSH_PATHS = ("key_file", "known_hosts")


class ConfigFile(Section, frozen=True, kw_only=True):
    """A config file: the YAML form, or seed 2's JSON cluster file (``cluster``), or both."""

    database: Text | None = None  # a path, sqlite:///path or postgresql://user@host/db
    ssh: SSHSettings = msgspec.field(default_factory=SSHSettings)
    collect: CollectSettings = msgspec.field(default_factory=CollectSettings)
    rank: RankSettings = msgspec.field(default_factory=RankSettings)
    influxdb: InfluxSettings | None = None  # None: the INFLUXDB_* environment variables, if set
    objectstores: dict[str, ObjectStoreEntry] = msgspec.field(default_factory=dict)
    destinations: tuple[DestinationEntry, ...] = ()
    policies: tuple[PolicyConfig, ...] = ()
    serve: ServeSettings = msgspec.field(default_factory=ServeSettings)
    cluster: ClusterFile | None = None


class Assembled(msgspec.Struct, frozen=True):
    config: Config | None
    problems: list[Problem]  # of the file
    env_problems: list[Problem]  # of the INFLUXDB_* variables


def assemble(d: Decoded[ConfigFile], path: Path, env: Mapping[str, str], read_secrets: bool) -> Assembled:
    problems: list[Problem] = []
    f = d.value
    if f is None:
        return Assembled(None, problems, [])
    base_dir = path.absolute().parent
    database = _database(f.database, base_dir, env, problems)
    ssh = _resolve_ssh(f.ssh, f.ssh, base_dir, env)
    env_problems: list[Problem] = []
    if f.influxdb is not None:
        influx: InfluxSettings | None = _influx(d, f.influxdb, base_dir, env, read_secrets, problems)
    else:
        influx, env_problems = influx_from_env(env, read_secrets)
    serve, serve_problems = resolve_serve(f.serve, base_dir, env, read_secrets)
    problems += serve_problems

    destinations = [
        (p, _destination(d, p, entry, ssh, base_dir, env, problems))
        for p, entry in d.items(("destinations",), f.destinations)
    ]
    ids = _given_ids(d)
    seed_policy: tuple[KeyPath, PolicyConfig] | None = None
    if f.cluster is not None:
        seed_dests, seed_policy = seed_cluster(d, f.cluster, ssh, problems)
        destinations += [(p[:-1], dest) for p, dest in seed_dests]
        ids += [(p, dest.id) for p, dest in seed_dests]
    _check_unique(ids, problems)
    known = {dest.id: dest for _, dest in destinations}

    policies = [
        (p, _policy(d, p, policy, known, problems)) for p, policy in d.items(("policies",), f.policies)
    ]
    if seed_policy is not None:
        policies.append(seed_policy)
    _check_overlap(policies, problems)
    config = Config(
        path=path,
        database=database,
        ssh=ssh,
        destinations=tuple(dest for _, dest in destinations),
        collect=f.collect,
        rank=f.rank,
        influxdb=influx,
        objectstores={k: (v.latitude, v.longitude) for k, v in f.objectstores.items()},
        policies=tuple(policy for _, policy in policies),
        serve=serve,
    )
    return Assembled(config, problems, env_problems)


def _database(
    value: str | None, base_dir: Path, env: Mapping[str, str], problems: list[Problem]
) -> str | None:
    """The store URL, a relative SQLite file made relative to the config file (as every path is)."""
    if value is None:
        return None
    try:
        url = parse_url(value)
    except ConfigError as exc:
        problems.append(Problem(("database",), str(exc).removeprefix("database: ")))
        return None
    if "://" not in value:
        return local_path(value, base_dir, env)
    if url.sqlite_file is None:  # PostgreSQL
        return value
    file = value.partition("://")[2][1:]
    if file == ":memory:" or file.startswith("/") or "?" in file:
        return value
    return local_path(file, base_dir, env)


def _resolve_ssh(base: SSHSettings, given: Any, base_dir: Path, env: Mapping[str, str]) -> SSHSettings:
    """``base`` with the SSH keys ``given`` sets (the ``ssh:`` block or a destination), paths resolved."""
    changes: dict[str, Any] = {}
    for name in _SSH_FIELDS:
        value = getattr(given, name)
        if value is not None:
            changes[name] = local_path(value, base_dir, env) if name in _SSH_PATHS else value
    return replace(base, **changes)


def _destination(
    d: Decoded[ConfigFile],
    path: KeyPath,
    e: DestinationEntry,
    ssh: SSHSettings,
    base_dir: Path,
    env: Mapping[str, str],
    problems: list[Problem],
) -> DestinationConfig:
    lat_given, lon_given = d.given((*path, "latitude")), d.given((*path, "longitude"))
    if lat_given != lon_given:
        missing = "longitude" if lat_given else "latitude"
        problems.append(
            Problem((*path, missing), "is required when the other coordinate is given", path, True)
        )
    for key, scheduler in (("sge", "sge"), ("yarn_url", "yarn"), ("yarn_local_dirs", "yarn")):
        if d.given((*path, key)) and e.scheduler != scheduler:
            message = f"only applies to scheduler {scheduler} (this destination is {e.scheduler})"
            problems.append(Problem((*path, key), message))
    return DestinationConfig(
        id=e.id,
        scheduler=e.scheduler,
        host=e.host,
        ssh=_resolve_ssh(ssh, e, base_dir, env),
        env={name: str(value) for name, value in e.env.items()},
        latitude=e.latitude if e.longitude is not None else None,
        longitude=e.longitude if e.latitude is not None else None,
        object_store=e.object_store,
        runner=e.runner,
        vhost=e.vhost,
        sge=e.sge,
        yarn_url=e.yarn_url,
        yarn_local_dirs=e.yarn_local_dirs,
        enabled=e.enabled,
    )


def _given_ids(d: Decoded[ConfigFile]) -> list[tuple[KeyPath, str]]:
    """Every destination id the file gives, of broken entries too: a duplicate is a problem either way."""
    entries = d.at(("destinations",))
    return [
        (("destinations", i, "id"), entry["id"])
        for i, entry in enumerate(entries if isinstance(entries, list) else [])
        if isinstance(entry, dict) and isinstance(entry.get("id"), str)
    ]


def _check_unique(ids: list[tuple[KeyPath, str]], problems: list[Problem]) -> None:
    first_seen: dict[str, KeyPath] = {}
    for id_path, dest_id in ids:
        if dest_id in first_seen:
            message = f"duplicate destination id {dest_id!r} (also {dotted(first_seen[dest_id])})"
            problems.append(Problem(id_path, message, id_path[:1], late=True))
        else:
            first_seen[dest_id] = id_path


def _id_list(
    d: Decoded[ConfigFile],
    path: KeyPath,
    given: tuple[str, ...],
    known: Mapping[str, DestinationConfig],
    problems: list[Problem],
) -> list[tuple[KeyPath, str]]:
    ids: list[tuple[KeyPath, str]] = []
    for p, item in d.items(path, given):
        if item not in known:
            problems.append(Problem(p, f"unknown destination {item!r}"))
        elif item in (i for _, i in ids):
            problems.append(Problem(p, f"{item!r} is listed twice"))
        else:
            ids.append((p, item))
    return ids


def _policy(
    d: Decoded[ConfigFile],
    path: KeyPath,
    policy: PolicyConfig,
    known: Mapping[str, DestinationConfig],
    problems: list[Problem],
) -> PolicyConfig:
    dests = [i for _, i in _id_list(d, (*path, "destinations"), policy.destinations, known, problems)]
    if not policy.destinations and not d.failed((*path, "destinations")):
        problems.append(Problem((*path, "destinations"), "must name at least one destination"))
    nodes = _id_list(d, (*path, "nodes"), policy.nodes, known, problems)
    for p, node_id in nodes:
        if known[node_id].scheduler != "node":
            problems.append(Problem(p, f"{node_id!r} is not a node destination"))
    high = policy.high_priority
    if high is not None and high not in dests:
        problems.append(
            Problem((*path, "high_priority"), f"{high!r} is not one of this policy's destinations")
        )
        high = None
    if policy.name == "best_effort" and not d.given((*path, "high_priority")):
        problems.append(Problem((*path, "high_priority"), "is required for best_effort"))
    for dest_id in policy.weights:
        if dest_id not in dests:
            problems.append(Problem((*path, "weights", dest_id), "is not one of this policy's destinations"))
    if policy.weights and not d.failed((*path, "weights")):
        total = sum(policy.weights.values())
        if abs(total - 100) > 1e-6:
            weights_path = (*path, "weights")
            problems.append(
                Problem(weights_path, f"must sum to 100, got {number(round(total, 6))}", weights_path, True)
            )
    return replace(policy, destinations=tuple(dests), nodes=tuple(n for _, n in nodes), high_priority=high)


def _check_overlap(policies: list[tuple[KeyPath, PolicyConfig]], problems: list[Problem]) -> None:
    """A destination shares nodes with one group only; two policies over it would contradict each other."""
    owner: dict[str, KeyPath] = {}
    for path, policy in policies:
        for dest_id in policy.destinations:
            if dest_id in owner:
                message = f"{dest_id!r} is already governed by {dotted(owner[dest_id])}"
                problems.append(Problem((*path, "destinations"), message, path[:1], late=True))
            else:
                owner[dest_id] = path


def resolve_serve(
    s: ServeSettings, base_dir: Path, env: Mapping[str, str], read_secrets: bool
) -> tuple[ServeSettings, list[Problem]]:
    """The token: ``token``, else ``token_file``, else $METASCHED_TOKEN, else the systemd credential
    ``serve-token``; none of them means no authentication."""
    problems: list[Problem] = []
    file_path = local_path(s.token_file, base_dir, env)
    token: str | None = None
    if s.token is not None and file_path is not None:
        problems.append(Problem(("serve", "token_file"), "give token or token_file, not both"))
    if s.token is not None:
        token = s.token
    elif file_path is not None and read_secrets:
        token, why = read_secret(file_path)
        if why is not None:
            problems.append(Problem(("serve", "token_file"), why))
        elif token is not None and not token.strip():
            problems.append(Problem(("serve", "token_file"), f"{file_path} is empty"))
            token = None
    elif file_path is None and read_secrets:
        token = env.get("METASCHED_TOKEN") or credential(env, CREDENTIAL_SERVE_TOKEN)
    resolved = replace(
        s,
        token=token.strip() if token else None,
        token_file=file_path,
        open_endpoints=tuple(dict.fromkeys(s.open_endpoints)),
    )
    return resolved, problems


def _influx(
    d: Decoded[ConfigFile],
    ix: InfluxSettings,
    base_dir: Path,
    env: Mapping[str, str],
    read_secrets: bool,
    problems: list[Problem],
) -> InfluxSettings:
    p: KeyPath = ("influxdb",)
    secrets: dict[str, str | None] = {}
    files: dict[str, str | None] = {}
    for key, file_key, name in (
        ("password", "password_file", CREDENTIAL_PASSWORD),
        ("token", "token_file", CREDENTIAL_TOKEN),
    ):
        literal = getattr(ix, key)
        file_path = files[file_key] = local_path(getattr(ix, file_key), base_dir, env)
        if literal is not None and file_path is not None:
            problems.append(Problem((*p, file_key), f"give {key} or {file_key}, not both"))
        if literal is not None:
            secrets[key] = literal
        elif file_path is not None:
            secrets[key], why = read_secret(file_path) if read_secrets else (None, None)
            if why is not None:
                problems.append(Problem((*p, file_key), why))
        else:
            secrets[key] = credential(env, name) if read_secrets else None
    if ix.version == 1 and not d.given((*p, "database")):
        problems.append(Problem((*p, "database"), "is required for InfluxDB 1.x"))
    if ix.version == 2:
        for key in ("org", "bucket"):
            if not d.given((*p, key)):
                problems.append(Problem((*p, key), "is required for InfluxDB 2.x"))
        if (
            not d.given((*p, "token"))
            and not d.given((*p, "token_file"))
            and read_secrets
            and secrets["token"] is None
        ):
            message = f"is required for InfluxDB 2.x (or token_file, or credential {CREDENTIAL_TOKEN})"
            problems.append(Problem((*p, "token"), message))
    return replace(
        ix,
        url=ix.url.rstrip("/"),
        password=secrets["password"],
        password_file=files["password_file"],
        token=secrets["token"],
        token_file=files["token_file"],
    )
