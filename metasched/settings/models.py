"""The typed configuration: the sections as the file writes them and as the commands use them.

Sections the file and the commands see alike (``ssh``, ``collect``, ``rank``, ``influxdb``, ``serve``,
``policies``, a destination's ``sge``) are one Struct each, decoded straight from the file; paths and
secrets in them are resolved after decoding (``metasched.settings.assemble``). A destination is the
one section whose file form differs: it carries SSH overrides, merged into ``DestinationConfig.ssh``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from metasched.settings.types import (
    AbsoluteDir,
    BodyBytes,
    Days,
    DestinationId,
    Endpoint,
    EnvName,
    EnvValue,
    Fanout,
    Fraction,
    HttpURL,
    KeyPolicy,
    Latitude,
    Longitude,
    Nice,
    NonNegative,
    OverrideValue,
    Percent,
    Policy,
    Port,
    Positive,
    SafeText,
    Scheduler,
    SchedulerName,
    Text,
    Window,
    Workers,
)

LOCAL_HOST = "local"


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every section: immutable, and a key the schema does not name is a problem, not ignored."""


class SSHSettings(Section, frozen=True):
    """How to reach a host. Top-level ``ssh:`` gives defaults; a destination may override any field."""

    user: SafeText | None = None
    key_file: Text | None = None
    known_hosts: Text | None = None  # None: ~/.ssh/known_hosts of the running user
    connect_timeout: Positive = 10.0
    command_timeout: Positive = 30.0
    host_key_policy: KeyPolicy = "strict"
    port: Port = 22


class SGESettings(Section, frozen=True):
    """Where the Grid Engine binaries and cell live on the head node."""

    bin_dir: Text | None = None  # None: rely on PATH
    root: Text | None = None  # SGE_ROOT
    cell: SafeText | None = None  # SGE_CELL


class DestinationOptions(Section, frozen=True, kw_only=True):
    """What a destination has besides its id, scheduler, host and SSH settings."""

    latitude: Latitude | None = None
    longitude: Longitude | None = None
    object_store: Text | None = None  # id of the object store co-located with this destination
    # Other names the same destination has in metric sources (gxadmin uses the TPV id).
    runner: Text | None = None
    vhost: Text | None = None  # AMQP vhost used by htcondor_cluster_usage
    sge: SGESettings = msgspec.field(default_factory=SGESettings)
    yarn_url: HttpURL | None = None  # ResourceManager REST base URL as seen from the head node
    # yarn.nodemanager.local-dirs on the NodeManagers (enforcement reads the container pid files there)
    yarn_local_dirs: tuple[AbsoluteDir, ...] = ()
    enabled: bool = True


class DestinationEntry(DestinationOptions, frozen=True, kw_only=True):
    """A ``destinations:`` item as written: the ``SSHSettings`` keys sit beside the destination's own;
    None keeps the top-level value."""

    id: Text  # the TPV destination id
    scheduler: Scheduler
    host: SafeText  # hostname/IP, or "local"
    env: dict[EnvName, EnvValue] = msgspec.field(default_factory=dict)  # extra environment of its commands
    user: SafeText | None = None
    key_file: Text | None = None
    known_hosts: Text | None = None
    connect_timeout: Positive | None = None
    command_timeout: Positive | None = None
    host_key_policy: KeyPolicy | None = None
    port: Port | None = None


class DestinationConfig(DestinationOptions, frozen=True, kw_only=True):
    """A destination as the commands use it, its SSH settings merged over the defaults."""

    id: str
    scheduler: SchedulerName
    host: str
    ssh: SSHSettings  # merged: defaults + this destination's overrides (port lives here)
    env: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL_HOST


class CollectSettings(Section, frozen=True):
    fanout: Fanout = 32  # destinations collected concurrently
    lock_timeout: NonNegative = 5.0  # seconds a second collect waits for a running one before giving up
    interval: Positive = 60.0  # serve: seconds between collect cycles
    jitter: Fraction = 0.1  # serve: random share of the interval added/taken per wait, and first-cycle delay
    history_days: Days = 90  # finished-job history kept this long


class RankSettings(Section, frozen=True):
    max_state_age: Positive = 300.0  # seconds; older collected state counts as unknown
    # see metasched.settings.weights.DEFAULT_WEIGHTS; names are checked by ``config check``
    weights: dict[str, NonNegative] = msgspec.field(default_factory=dict)
    ledger: bool = True  # record each answer's placement and count recent ones as queued demand
    ledger_ttl: Positive = 1800.0  # seconds; an in-flight placement collect never saw stops counting


class InfluxSettings(Section, frozen=True):
    """InfluxDB connection; filled from the config or the seed's INFLUXDB_* environment variables."""

    url: HttpURL  # http(s)://host:port
    database: Text | None = None  # 1.x
    username: Text | None = None
    password: Text | None = None  # resolved from password_file when given
    verify_ssl: bool = True
    version: Literal[1, 2] = 1
    token: Text | None = None  # 2.x; resolved from token_file when given
    org: Text | None = None  # 2.x
    bucket: Text | None = None  # 2.x
    timeout: Positive = 10.0
    max_age: Positive = 900.0  # seconds; cached metrics older than this are flagged in rank warnings
    window: Window = "15m"  # time bound of each query
    measurements: dict[str, dict[str, OverrideValue]] = msgspec.field(default_factory=dict)  # overrides
    write_summary: bool = False  # collect writes its capacity summary as line protocol
    password_file: Text | None = None
    token_file: Text | None = None


class ServeSettings(Section, frozen=True):
    """``metasched serve``: where it listens and who may ask (see docs/serve.md)."""

    host: SafeText = "127.0.0.1"
    port: Port = 8000
    token: Text | None = None  # bearer token; from token, token_file, $METASCHED_TOKEN or a credential
    max_body_bytes: BodyBytes = 1 << 20  # larger request bodies get 413
    # Reachable without the token: health, metrics and the API docs carry no data.
    open_endpoints: tuple[Endpoint, ...] = ("/healthz", "/metrics", "/docs", "/openapi.json")
    token_file: Text | None = None
    # Processes answering HTTP on the one socket (the first one also collects): ranking is CPU-bound
    # Python, one process uses one core. Read at start only.
    workers: Workers = 1


class PolicyConfig(Section, frozen=True):
    """Seed-2 cluster policy over a node group."""

    name: Policy
    destinations: tuple[DestinationId, ...]  # destinations sharing the node group
    high_priority: Text | None = None
    weights: dict[str, Percent] = msgspec.field(default_factory=dict)
    enforce: bool = False
    nice: Nice = 10
    nodes: tuple[
        DestinationId, ...
    ] = ()  # `node` destinations (hosts) the group shares; enforcement acts there
    sudo: bool = False  # enforcement prefixes renice with `sudo -n` (needed to lower a nice value)


class ObjectStoreEntry(Section, frozen=True):
    latitude: Latitude
    longitude: Longitude


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The configuration the commands use: assembled from a ``ConfigFile`` (or the built-in default)."""

    path: Path | None
    database: str | None  # None: the default location (see default_database_url)
    ssh: SSHSettings
    destinations: tuple[DestinationConfig, ...]
    collect: CollectSettings = msgspec.field(default_factory=CollectSettings)
    rank: RankSettings = msgspec.field(default_factory=RankSettings)
    influxdb: InfluxSettings | None = None
    objectstores: dict[str, tuple[float, float]] = msgspec.field(default_factory=dict)  # id -> (lat, lon)
    policies: tuple[PolicyConfig, ...] = ()
    serve: ServeSettings = msgspec.field(default_factory=ServeSettings)

    def destination(self, dest_id: str) -> DestinationConfig | None:
        for d in self.destinations:
            if d.id == dest_id:
                return d
        return None
