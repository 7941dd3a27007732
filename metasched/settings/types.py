"""The constrained value types the schema is built from, each written once.

A ``Meta(extra={"error": ...})`` gives the wording ``config check`` uses when a value does not fit;
without one the message is derived from the constraints (see ``metasched.settings.problems``).
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal, get_args

from msgspec import Meta

MAX_FLOAT = sys.float_info.max  # an upper bound that only refuses infinity: configs hold finite numbers
_NO_CONTROL = r"\x00-\x1f\x7f"

SchedulerName = Literal["slurm", "node", "sge", "htcondor", "yarn"]
HostKeyPolicy = Literal["strict", "accept-new"]
PolicyName = Literal["exclusive", "best_effort", "shared", "dynamic"]
ServeEndpoint = Literal[
    "/healthz", "/metrics", "/v1/status", "/v1/rank", "/process_data", "/docs", "/openapi.json"
]
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)
HOST_KEY_POLICIES: tuple[str, ...] = get_args(HostKeyPolicy)
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
SERVE_ENDPOINTS: tuple[str, ...] = get_args(ServeEndpoint)


def _one_of(choices: tuple[str, ...]) -> Meta:
    """Names the choices in the order written (msgspec's type info sorts them)."""
    return Meta(extra={"error": f"must be one of {', '.join(choices)}"})


Scheduler = Annotated[SchedulerName, _one_of(SCHEDULERS)]
KeyPolicy = Annotated[HostKeyPolicy, _one_of(HOST_KEY_POLICIES)]
Policy = Annotated[PolicyName, _one_of(POLICY_NAMES)]
Endpoint = Annotated[ServeEndpoint, _one_of(SERVE_ENDPOINTS)]

# Non-blank single-line text.
Text = Annotated[str, Meta(pattern=rf"^[^{_NO_CONTROL}]*[^\s{_NO_CONTROL}][^{_NO_CONTROL}]*\Z")]
# Text that ends up on a command line (hosts, users, cells): no whitespace, no leading '-'.
SafeText = Annotated[
    str,
    Meta(
        pattern=rf"^[^\s{_NO_CONTROL}-][^\s{_NO_CONTROL}]*\Z",
        extra={"error": "must not contain whitespace or start with '-'"},
    ),
]
HttpURL = Annotated[
    str,
    Meta(
        pattern=rf"^https?://[^{_NO_CONTROL}]*\Z",
        extra={"error": "must start with http:// or https://"},
    ),
]
Window = Annotated[
    str,
    Meta(pattern=r"^[1-9][0-9]*[smhdw]\Z", extra={"error": "must be a duration like 90s, 15m, 2h, 2d or 1w"}),
]
AbsoluteDir = Annotated[
    str,
    Meta(
        pattern=rf"^/[^{_NO_CONTROL}]*\Z",
        extra={"error": "must be an absolute directory path", "any_value": True},
    ),
]
EnvName = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*\Z",
        extra={"error": "is not a valid environment variable name", "bare": True, "any_value": True},
    ),
]
EnvValue = Annotated[str | int | float, Meta(extra={"error": "must be a string"})]
DestinationId = Annotated[str, Meta(extra={"error": "must be a destination id", "any_value": True})]

Port = Annotated[int, Meta(ge=1, le=65535)]
Fanout = Annotated[int, Meta(ge=1, le=1024)]
Days = Annotated[int, Meta(ge=1)]
BodyBytes = Annotated[int, Meta(ge=1024)]
Workers = Annotated[int, Meta(ge=1, le=64)]
NodeIndex = Annotated[int, Meta(extra={"error": "must be an index into cluster.nodes"})]  # range: seed.py
SchedulerIndex = Annotated[int, Meta(extra={"error": "must be an index into cluster.schedulers"})]
Nice = Annotated[int, Meta(ge=-20, le=19)]
Positive = Annotated[float, Meta(gt=0, le=MAX_FLOAT)]
NonNegative = Annotated[float, Meta(ge=0, le=MAX_FLOAT)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]

# InfluxDB measurement overrides: only the shape here; ``metasched.settings.measurements`` knows the meaning.
Scalar = Annotated[str | int | float | bool | None, Meta(extra={"error": "must be a single value"})]
OverrideValue = Annotated[
    str | int | float | bool | dict[str, Scalar] | None,
    Meta(extra={"error": "must be a single value or a mapping"}),
]
