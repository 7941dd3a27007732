"""Slurm's value notations, as squeue/sinfo print them: memory sizes, timestamps, GRES/TRES lists,
array index expressions, job states with their pending reasons, node states with their flags.

Pure functions on one field each, so the line parsers in ``slurm`` stay about rows and columns.
Conventions (MB, aware UTC, what counts as held or unavailable) are the ones ``slurm`` documents.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from metasched.domain.errors import ParseError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, JobState

ARRAY_EXPAND_LIMIT = 100_000

# Pending reasons that mean "not waiting for capacity": such jobs are not demand.
HELD_REASONS = frozenset(
    {
        "Dependency",
        "DependencyNeverSatisfied",
        "JobHeldUser",
        "JobHeldAdmin",
        "BeginTime",
        "JobHoldMaxRequeue",
        "Reservation",
        "InvalidAccount",
        "InvalidQOS",
        "BadConstraints",
        "launch failed requeued held",
    }
)
_RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT"})
_HELD_STATES = frozenset({"REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"})
_PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED"})

_UNAVAILABLE_NODE_WORDS = frozenset(
    {
        "down",
        "drain",
        "drained",
        "draining",
        "fail",
        "failing",
        "maint",
        "unknown",
        "unk",
        "not_responding",
        "powered_down",
        "powering_down",
        "power_down",
        "reboot_requested",
        "reboot_issued",
        "inval",
        "invalid",
        "invalid_reg",
        "future",
    }
)
# sinfo state suffixes: * not responding, ~ powered off, ! pending power down, % powering down,
# $ maintenance reservation, @ pending reboot, ^ rebooting. (# powering up and - planned stay usable.)
_UNAVAILABLE_SUFFIXES = frozenset("*~!%$@^")
_ALL_SUFFIXES = "*~#!%$@^-+"

_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}
_MEM_RE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)B?\Z", re.IGNORECASE)
_PAREN_RE = re.compile(r"\([^)]*\)")
MISSING = frozenset({"", "N/A", "n/a", "(null)", "None", "none", "Unknown", "UNLIMITED"})


def mem_mb(text: str, where: str = "memory") -> int:
    """``500M``/``1G``/``1.50G``/``4000``/``0`` -> MB (a bare number is MB, as Slurm means it)."""
    text = text.strip()
    if text in MISSING:
        return 0
    m = _MEM_RE.match(text)
    if m is None:
        raise ParseError(f"{where}: cannot read memory value {text!r}")
    return round(float(m.group(1)) * _MEM_UNITS[m.group(2).upper() or "M"])


def parse_time(text: str, where: str = "time") -> datetime | None:
    """Slurm timestamp -> aware UTC. With an offset (our SLURM_TIME_FORMAT) exact; without one the
    text is the head node's local time, taken as this machine's local zone."""
    text = text.strip()
    if text in MISSING:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(f"{where}: cannot read timestamp {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive: local time of this machine
    return dt.astimezone(UTC)


def gpu_count(spec: str) -> int:
    """GPUs in a gres/TRES list: ``gres:gpu:2``, ``gres/gpu:a100=2``, ``gpu:a100:1(IDX:0),gpu:v100:0``,
    ``gres/gpu=4``, ``gpu`` (one). Other gres (mps, shard, nic) are ignored."""
    spec = _PAREN_RE.sub("", spec.strip())
    if spec in MISSING:
        return 0
    total = 0
    for raw in spec.split(","):
        item = raw.strip()
        for prefix in ("gres:", "gres/"):
            if item.startswith(prefix):
                item = item[len(prefix) :]
        tokens = re.split(r"[:=]", item)
        if tokens[0] != "gpu":
            continue
        last = tokens[-1] if len(tokens) > 1 else ""
        total += int(last) if last.isdigit() else 1
    return total


def tres_value(tres: str, key: str) -> str | None:
    """``cpu=1,mem=500M,gres/gpu=1`` -> value of ``key`` or None."""
    for item in tres.split(","):
        k, eq, v = item.partition("=")
        if eq and k.strip() == key:
            return v.strip()
    return None


def expand_array_indices(expr: str, limit: int = ARRAY_EXPAND_LIMIT) -> list[int] | None:
    """``4-10%2``, ``1,3,5-7``, ``1-9:2`` -> the indices (at most ``limit``); None when unreadable
    (e.g. Slurm shortened it with "...")."""
    expr = expr.split("%", 1)[0]
    out: list[int] = []
    for part in expr.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if m is None:
            return None
        start = int(m.group(1))
        stop = int(m.group(2)) if m.group(2) else start
        step = int(m.group(3)) if m.group(3) else 1
        if stop < start or step < 1:
            return None
        for i in range(start, stop + 1, step):
            if len(out) >= limit:
                return out
            out.append(i)
    return out


def job_state(raw: str, reason: str) -> JobState:
    """Slurm state + pending reason -> PENDING/RUNNING/HELD/OTHER."""
    state = raw.strip().upper()
    if state in _RUNNING_STATES:
        return RUNNING
    if state in _HELD_STATES:
        return HELD
    if state in _PENDING_STATES:
        return HELD if reason in HELD_REASONS or reason.startswith("Dependency") else PENDING
    return OTHER


def node_available(state_long: str, state_complete: str) -> bool:
    """False for down/drained/not responding/powered off/... from the base state, ``+FLAGS`` and suffixes."""
    long_ = state_long.strip().lower()
    if any(c in _UNAVAILABLE_SUFFIXES for c in long_):
        return False
    words = {w for w in re.split(r"[+\s]", state_complete.strip().lower()) if w}
    words.add(long_.rstrip(_ALL_SUFFIXES))
    return not (words & _UNAVAILABLE_NODE_WORDS)
