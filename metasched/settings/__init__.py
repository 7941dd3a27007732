"""Typed configuration: the YAML file (and seed 2's JSON cluster file) as msgspec Structs.

The schema is the Structs in ``models`` (sections) and ``assemble.ConfigFile`` (the whole file), built
from the constrained types in ``types``. ``load_config`` decodes a file with msgspec and, when that
fails, walks it (``walker``) to report every problem as ``FILE: key.path: message``. Kept free of
heavy imports (``yaml``, ``msgspec`` and the standard library): ``rank`` loads the config on every call;
``config check``'s extra checks are in ``metasched.settings.check``.
"""

from metasched.settings.environment import (
    CREDENTIAL_PASSWORD,
    CREDENTIAL_SERVE_TOKEN,
    CREDENTIAL_TOKEN,
    CREDENTIALS_VARS,
    ENV_LABEL,
)
from metasched.settings.loading import (
    DEFAULT_DESTINATION_ID,
    SYSTEM_CONFIG,
    database_url,
    default_config,
    default_database_url,
    load_config,
    resolve_config_path,
)
from metasched.settings.models import (
    LOCAL_HOST,
    CollectSettings,
    Config,
    DestinationConfig,
    InfluxSettings,
    PolicyConfig,
    RankSettings,
    ServeSettings,
    SGESettings,
    SSHSettings,
)
from metasched.settings.seed import SEED2_NAMES, SEED2_SCHEDULERS, SEED2_SSH_USER, slug
from metasched.settings.types import (
    HOST_KEY_POLICIES,
    POLICY_NAMES,
    SCHEDULERS,
    SERVE_ENDPOINTS,
    HostKeyPolicy,
    SchedulerName,
)

__all__ = [
    "CREDENTIALS_VARS",
    "CREDENTIAL_PASSWORD",
    "CREDENTIAL_SERVE_TOKEN",
    "CREDENTIAL_TOKEN",
    "DEFAULT_DESTINATION_ID",
    "ENV_LABEL",
    "HOST_KEY_POLICIES",
    "LOCAL_HOST",
    "POLICY_NAMES",
    "SCHEDULERS",
    "SEED2_NAMES",
    "SEED2_SCHEDULERS",
    "SEED2_SSH_USER",
    "SERVE_ENDPOINTS",
    "SYSTEM_CONFIG",
    "CollectSettings",
    "Config",
    "DestinationConfig",
    "HostKeyPolicy",
    "InfluxSettings",
    "PolicyConfig",
    "RankSettings",
    "SGESettings",
    "SSHSettings",
    "SchedulerName",
    "ServeSettings",
    "database_url",
    "default_config",
    "default_database_url",
    "load_config",
    "resolve_config_path",
    "slug",
]
