"""Plain nodes (seed-2 ``nodes``): one host, no scheduler; cores, memory and load from /proc.

One command per collect (one round trip): ``uname -n`` (the node's name), ``getconf _NPROCESSORS_ONLN``
(online CPUs; unlike ``nproc`` it ignores OMP_NUM_THREADS and the login shell's CPU affinity), then
``/proc/loadavg`` and ``/proc/meminfo``. The script is a constant, so nothing from the config reaches a shell.

The node is ``available`` when the command ran (an unreachable host fails the collect instead).
There is no allocation on a plain node, so ``cores_alloc`` is the 1-minute load rounded and capped at
the core count: a node running 3 busy processes on 4 cores has 1 core free. Memory "free" is
MemAvailable (what new work can get without swapping), not MemFree.
"""

from __future__ import annotations

from metasched.domain.errors import ParseError
from metasched.domain.jobs import Node, Snapshot
from metasched.domain.ports import Runner
from metasched.settings import DestinationConfig

SCRIPT = "uname -n && getconf _NPROCESSORS_ONLN && cat /proc/loadavg /proc/meminfo"


def node_command() -> list[str]:
    return ["sh", "-c", SCRIPT]


class NodeAdapter:
    """One Node (named as the host calls itself), no partitions, no jobs."""

    def __init__(self, dest: DestinationConfig) -> None:
        self.dest = dest

    def collect(self, runner: Runner) -> Snapshot:
        return Snapshot(nodes=[parse_node(runner.run(node_command()))])


def parse_node(text: str) -> Node:
    """Output of ``node_command()``: hostname, CPU count, /proc/loadavg line, /proc/meminfo lines."""
    lines = text.splitlines()
    if len(lines) < 4:
        raise ParseError(
            f"node probe: expected hostname, cpu count, loadavg and meminfo, got {len(lines)} lines"
        )
    name = lines[0].strip()
    if not name or " " in name:
        raise ParseError(f"node probe: line 1: not a host name: {lines[0][:60]!r}")
    try:
        cores = int(lines[1].strip())
    except ValueError:
        raise ParseError(f"node probe: line 2: CPU count is not a number: {lines[1][:60]!r}") from None
    load = lines[2].split()
    try:
        load_1, load_5, load_15 = (float(x) for x in load[:3])
    except ValueError:
        raise ParseError(f"node probe: line 3: not /proc/loadavg: {lines[2][:60]!r}") from None
    if len(load) != 5:
        raise ParseError(f"node probe: line 3: not /proc/loadavg: {lines[2][:60]!r}")
    meminfo = parse_meminfo(lines[3:])
    for key in ("MemTotal", "MemAvailable"):
        if key not in meminfo:
            raise ParseError(f"node probe: /proc/meminfo has no {key} (truncated output?)")
    total = meminfo["MemTotal"] // 1024
    available = meminfo["MemAvailable"] // 1024
    return Node(
        name=name,
        state="up",
        available=True,
        cores_total=cores,
        cores_alloc=min(cores, round(load_1)),
        mem_total_mb=total,
        mem_alloc_mb=max(0, total - available),
        mem_free_mb=available,
        load_1=load_1,
        load_5=load_5,
        load_15=load_15,
    )


def parse_meminfo(lines: list[str], first_lineno: int = 4) -> dict[str, int]:
    """``MemTotal:  24684084 kB`` lines -> {"MemTotal": 24684084} (kB; HugePages_* are counts)."""
    out: dict[str, int] = {}
    for n, line in enumerate(lines, first_lineno):
        if not line.strip():
            continue
        key, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or not fields or not fields[0].isdigit():
            raise ParseError(f"node probe: line {n}: not /proc/meminfo: {line[:60]!r}")
        out[key.strip()] = int(fields[0])
    return out
