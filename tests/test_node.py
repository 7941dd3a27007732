"""Plain-node adapter: the parser on the probe captured from this machine (tests/capture_fixtures.py),
and collect() on this machine locally and over real SSH as the non-root test user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metasched.domain.errors import ParseError
from metasched.schedulers.node import NodeAdapter, node_command, parse_node
from metasched.schedulers.registry import make_adapter
from metasched.settings import DestinationConfig, SSHSettings
from metasched.transport.local import LocalTransport
from metasched.transport.ssh import SSHTransport
from tests.infra.sshd import SSHServer

PROBE = (Path(__file__).parent / "fixtures" / "node" / "probe.txt").read_text()


def _meminfo_kb(text: str, key: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def test_parse_captured_probe() -> None:
    node = parse_node(PROBE)
    lines = PROBE.splitlines()
    assert node.name == lines[0]
    assert node.cores_total == int(lines[1])
    load = [float(x) for x in lines[2].split()[:3]]
    assert (node.load_1, node.load_5, node.load_15) == tuple(load)
    assert node.mem_total_mb == _meminfo_kb(PROBE, "MemTotal") // 1024
    assert node.mem_free_mb == _meminfo_kb(PROBE, "MemAvailable") // 1024
    assert node.mem_alloc_mb == node.mem_total_mb - node.mem_free_mb
    assert node.available and node.state == "up"
    assert node.cores_alloc == min(node.cores_total, round(load[0]))
    assert node.partitions == () and node.gpus_total == 0


def test_busy_node_cores_alloc_is_capped_load() -> None:
    lines = PROBE.splitlines()
    lines[1], lines[2] = "4", "2.60 1.00 0.50 3/200 1234"
    assert parse_node("\n".join(lines)).cores_alloc == 3
    lines[2] = "17.00 9.00 4.00 18/200 1234"
    assert parse_node("\n".join(lines)).cores_alloc == 4


def test_truncated_and_garbage_probe() -> None:
    cut = PROBE[: PROBE.index("MemAvailable")]
    with pytest.raises(ParseError, match="node probe: /proc/meminfo has no MemAvailable"):
        parse_node(cut)
    with pytest.raises(ParseError, match="node probe: expected hostname, cpu count, loadavg and meminfo"):
        parse_node("\n".join(PROBE.splitlines()[:2]))
    lines = PROBE.splitlines()
    with pytest.raises(ParseError, match="node probe: line 2: CPU count is not a number"):
        parse_node("\n".join([lines[0], "getconf: unknown", *lines[2:]]))
    with pytest.raises(ParseError, match="node probe: line 3: not /proc/loadavg"):
        parse_node("\n".join([*lines[:2], "0.1 0.2", *lines[3:]]))
    with pytest.raises(ParseError, match=r"node probe: line 5: not /proc/meminfo: 'MemFree 12'"):
        parse_node("\n".join([*lines[:4], "MemFree 12", *lines[5:]]))


def test_command_is_one_constant_round_trip() -> None:
    argv = node_command()
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3


def test_collect_this_machine_locally() -> None:
    dest = DestinationConfig(id="node_local", scheduler="node", host="local", ssh=SSHSettings())
    adapter = make_adapter(dest)
    assert isinstance(adapter, NodeAdapter)
    with LocalTransport(dest) as runner:
        snap = adapter.collect(runner)
    (node,) = snap.nodes
    assert snap.jobs == () and snap.partitions == ()
    assert node.name == os.uname().nodename
    assert node.cores_total == os.cpu_count()
    assert (
        node.mem_total_mb > 0 and node.mem_free_mb is not None and 0 < node.mem_free_mb <= node.mem_total_mb
    )


def test_collect_over_ssh_as_non_root(sshd: SSHServer) -> None:
    dest = sshd.destination("node_ssh", "node")
    with SSHTransport(dest) as runner:
        (node,) = NodeAdapter(dest).collect(runner).nodes
    assert node.name == os.uname().nodename  # same machine, seen through sshd
    assert node.cores_total == os.cpu_count() and node.available
