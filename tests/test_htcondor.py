"""HTCondor adapter, tested on documented-shape output only.

No HTCondor daemon can be installed on this machine, so nothing here talks to a real pool and none of
these tests is an integration test. The fixtures in tests/fixtures/htcondor/ are ``condor_status -json``
/ ``condor_q -json`` listings whose ads were printed by HTCondor's own ClassAd JSON unparser (the
``classad2`` module of the PyPI ``htcondor`` wheel; see make_fixtures.py), with attribute names and types
from the HTCondor machine/job ClassAd references: a pool with partitionable slots and their dynamic
children, a GPU machine, static slots (one in Owner state), a drained machine and an absent startd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from metasched.domain.errors import ParseError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Node
from metasched.schedulers.htcondor import (
    HTCondorAdapter,
    build_nodes,
    parse_ads,
    parse_condor_q,
    parse_condor_status,
)
from metasched.schedulers.registry import make_adapter
from metasched.settings import DestinationConfig, SSHSettings

FIXTURES = Path(__file__).parent / "fixtures" / "htcondor"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def nodes_by_name() -> dict[str, Node]:
    slots = parse_ads(fixture("condor_status.json"), "condor_status")
    absent = parse_ads(fixture("condor_status_absent.json"), "condor_status -absent")
    return {n.name: n for n in build_nodes(slots, absent)}


def test_partitionable_slot_free_is_its_unclaimed_remainder() -> None:
    node = {n.name: n for n in parse_condor_status(fixture("condor_status.json"))}["cpu01.example.org"]
    # Dynamic children (16 + 8 cores) are inside TotalSlotCpus - Cpus, not added again.
    assert (node.cores_total, node.cores_alloc) == (32, 24)
    assert (node.mem_total_mb, node.mem_alloc_mb) == (128000, 96000)
    assert node.available and node.gpus_total == 0
    assert node.load_1 == pytest.approx(24.13)
    assert node.partitions == ("pool",)


def test_gpus_of_partitionable_slots() -> None:
    node = {n.name: n for n in parse_condor_status(fixture("condor_status.json"))}["gpu01.example.org"]
    assert (node.gpus_total, node.gpus_alloc) == (4, 1)
    assert (node.cores_total, node.cores_alloc) == (16, 4)


def test_static_slots_free_only_when_unclaimed() -> None:
    node = {n.name: n for n in parse_condor_status(fixture("condor_status.json"))}["static01.example.org"]
    # 2 claimed + 1 in Owner state are not free; 1 Unclaimed slot is.
    assert (node.cores_total, node.cores_alloc) == (4, 3)
    assert node.available  # the Unclaimed slot still accepts work
    assert node.state == "Static:Claimed,Static:Owner,Static:Unclaimed"


def test_drained_and_absent_machines_are_unavailable() -> None:
    nodes = nodes_by_name()
    drained = nodes["cpu02.example.org"]
    assert not drained.available and "Drained" in drained.reason
    assert drained.cores_alloc == 32  # nothing of it is free
    absent = nodes["cpu03.example.org"]
    assert not absent.available and absent.state == "absent"
    assert "2026-11-23T17:00:00+00:00" in absent.reason
    assert len(nodes) == 5


def test_startd_far_behind_the_freshest_ad_is_unavailable() -> None:
    slots = parse_ads(fixture("condor_status.json"), "condor_status")
    for ad in slots:
        if ad["Machine"] == "gpu01.example.org":
            ad["LastHeardFrom"] -= 1800
    nodes = {n.name: n for n in build_nodes(slots)}
    assert not nodes["gpu01.example.org"].available
    assert "not heard from for 1800 s" in nodes["gpu01.example.org"].reason
    assert nodes["cpu01.example.org"].available


def test_jobs_states_resources_and_times() -> None:
    jobs = {j.job_id: j for j in parse_condor_q(fixture("condor_q.json"))}
    assert {jid for jid, j in jobs.items() if j.state == RUNNING} == {"4021.0", "4022.0", "4023.0"}
    assert {jid for jid, j in jobs.items() if j.state == PENDING} == {"4030.0", "4031.0", "4031.1"}
    held = jobs["4040.0"]
    assert held.state == HELD and held.raw_state == "Held" and "memory limit" in held.reason
    assert jobs["4041.0"].state == OTHER
    galaxy = jobs["4021.0"]
    assert galaxy.name == "g4021_bwa_mem_alice" and galaxy.user == "galaxy"
    assert (galaxy.cores, galaxy.mem_mb, galaxy.nodes) == (16, 64000, "cpu01.example.org")
    assert galaxy.submit_time == datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    assert galaxy.start_time == datetime(2026, 11, 23, 18, 10, tzinfo=UTC)
    assert jobs["4023.0"].gpus == 1
    # Default RequestMemory is an unevaluated expression in -json output: unknown, not a crash.
    assert jobs["4031.0"].mem_mb == 0 and jobs["4031.0"].name == "sleep"
    assert jobs["4030.0"].start_time is None


def test_empty_listing_is_no_ads() -> None:
    assert parse_condor_q(fixture("condor_q_empty.json")) == []
    assert parse_condor_status("") == []


@pytest.mark.parametrize(
    ("name", "command"), [("condor_status.json", "condor_status"), ("condor_q.json", "condor_q")]
)
def test_truncated_output_is_a_parse_error_naming_the_command(name: str, command: str) -> None:
    text = fixture(name)
    parse = parse_condor_q if command == "condor_q" else parse_condor_status
    with pytest.raises(ParseError, match=command):
        parse(text[: len(text) // 2])


def test_wrong_shapes_are_parse_errors() -> None:
    with pytest.raises(ParseError, match="JSON array"):
        parse_condor_q('{"ClusterId": 1}')
    with pytest.raises(ParseError, match="ClusterId/JobStatus"):
        parse_condor_q('[{"ProcId": 0}]')
    with pytest.raises(ParseError, match="without Machine"):
        parse_condor_status('[{"Cpus": 4}]')


class CannedRunner:
    """Returns the fixture for each command and records argv: checks command construction only."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        self.calls.append(list(argv))
        if argv[0] == "condor_q":
            return fixture("condor_q.json")
        return fixture("condor_status_absent.json" if "-absent" in argv else "condor_status.json")


def test_adapter_commands_and_snapshot() -> None:
    dest = DestinationConfig(id="condor", scheduler="htcondor", host="local", ssh=SSHSettings())
    adapter = make_adapter(dest)
    assert isinstance(adapter, HTCondorAdapter)
    runner = CannedRunner()
    snap = adapter.collect(runner)
    assert [c[:2] for c in runner.calls] == [
        ["condor_status", "-json"],
        ["condor_status", "-absent"],
        ["condor_q", "-allusers"],
    ]
    assert all("-attributes" in c for c in runner.calls)
    (pool,) = snap.partitions
    assert pool.name == "pool" and pool.nodes_total == 5 and pool.available
    assert len(snap.jobs) == 8
