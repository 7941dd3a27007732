"""Configuration: the YAML file (and the seed-2 JSON cluster file) as typed, validated dataclasses.

Kept free of heavy imports (only ``yaml``): ``rank`` loads the config on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SchedulerName = Literal["slurm", "node", "sge", "htcondor", "yarn"]
HostKeyPolicy = Literal["strict", "accept-new"]
LOCAL_HOST = "local"


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
    enabled: bool = True

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL_HOST


@dataclass(frozen=True, slots=True)
class CollectSettings:
    fanout: int = 32  # destinations collected concurrently
    lock_timeout: float = 5.0  # seconds a second collect waits for a running one before giving up
    interval: float = 60.0  # serve: seconds between collect cycles
    history_days: int = 90  # finished-job history kept this long


@dataclass(frozen=True, slots=True)
class RankSettings:
    max_state_age: float = 300.0  # seconds; older collected state counts as unknown
    weights: dict[str, float] = field(default_factory=dict)  # see metasched.rank.model.DEFAULT_WEIGHTS


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
class PolicyConfig:
    """Seed-2 cluster policy over a node group (issue: policies)."""

    name: str  # exclusive | best_effort | shared | dynamic
    destinations: tuple[str, ...]  # destinations sharing the node group
    high_priority: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    enforce: bool = False
    nice: int = 10


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

    def destination(self, dest_id: str) -> DestinationConfig | None:
        for d in self.destinations:
            if d.id == dest_id:
                return d
        return None


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> Config:
    """Read and validate a YAML config or a seed-2 JSON cluster file; raise ConfigError with every problem.

    ``path`` None gives an empty config (no destinations). ``env`` (default os.environ) supplies the
    INFLUXDB_* fallbacks.
    """
    raise NotImplementedError


def check_config(path: str | Path) -> list[str]:
    """Every problem of a config file as ``FILE: key.path: message`` lines (empty when valid)."""
    raise NotImplementedError


def default_database_url(env: dict[str, str] | None = None) -> str:
    """$STATE_DIRECTORY/metasched.db (systemd), else $XDG_STATE_HOME/metasched/metasched.db (~/.local/state)."""
    raise NotImplementedError
