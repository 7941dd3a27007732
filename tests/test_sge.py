"""SGE adapter: parsers on XML captured from the real Son of Grid Engine 8.1.9 cell of the ``sge`` fixture
(tests/fixtures/sge/, re-captured by tests/fixtures/sge/capture.py), and the adapter end to end over real
SSH as the non-root user ``mstest`` against that live cell."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from metasched.domain.errors import ParseError, TransportError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Job
from metasched.schedulers.registry import make_adapter
from metasched.schedulers.sge import (
    SGEAdapter,
    build_snapshot,
    job_state,
    memory_mb,
    parse_qhost,
    parse_qstat_jobs,
    parse_qstat_queues,
    parse_utc_offset,
)
from metasched.settings import DestinationConfig, SGESettings, SSHSettings
from metasched.transport import open_transport
from tests.infra.procs import free_port
from tests.infra.sge import SGECluster
from tests.infra.sshd import SSHServer

FIXTURES = Path(__file__).parent / "fixtures" / "sge"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_id(jobs: Sequence[Job]) -> dict[str, Job]:
    return {j.job_id: j for j in jobs}


# --- parsers on captured real output ---------------------------------------------------------------------


def test_jobs_running_pending_held_error_dependency() -> None:
    jobs = by_id(parse_qstat_jobs(fixture("qstat_jobs.xml")))
    assert {jid for jid, j in jobs.items() if j.state == RUNNING} == {"2", "3"}
    assert jobs["2"].nodes == "vm" and jobs["2"].partition == "all.q"
    assert jobs["2"].name == "g201_bwa_bob" and jobs["2"].user == "root" and jobs["2"].cores == 1
    assert jobs["2"].start_time == datetime(2026, 11, 23, 19, 46, 47, tzinfo=UTC)
    assert jobs["2"].submit_time is None
    # Error and hold states are never demand.
    assert (jobs["1"].state, jobs["1"].raw_state, jobs["1"].reason) == (HELD, "Eqw", "error")
    assert (jobs["6"].state, jobs["6"].raw_state, jobs["6"].reason) == (HELD, "hqw", "hold")
    assert (jobs["7"].state, jobs["7"].reason) == (HELD, "dependency")
    pending = jobs["4"]
    assert (pending.state, pending.partition, pending.mem_mb) == (PENDING, "all.q", 2048)
    assert pending.submit_time is not None and pending.submit_time.tzinfo is UTC
    # A pending array 1-3:1 is three tasks of demand.
    assert [jid for jid in jobs if jid.startswith("5_")] == ["5_1", "5_2", "5_3"]
    assert all(jobs[f"5_{t}"].state == PENDING for t in (1, 2, 3))


def test_jobs_without_r_flag_and_local_time_offset() -> None:
    plus_one = timezone(timedelta(hours=1))
    jobs = by_id(parse_qstat_jobs(fixture("qstat_jobs_plain.xml"), plus_one))
    assert jobs["2"].start_time == datetime(2026, 11, 23, 18, 46, 47, tzinfo=UTC)
    assert jobs["7"].state == HELD  # hqw even without predecessor_jobs
    assert jobs["4"].mem_mb == 0  # no -r: no resource requests


def test_queue_instances_and_flags() -> None:
    (qi,) = parse_qstat_queues(fixture("qstat_f.xml"))
    assert (qi.queue, qi.host, qi.slots_used, qi.slots_total, qi.state, qi.available) == (
        "all.q",
        "vm",
        2,
        2,
        "",
        True,
    )
    (disabled,) = parse_qstat_queues(fixture("qstat_f_disabled.xml"))
    assert disabled.state == "d" and not disabled.available


def test_qhost_skips_global_and_reads_units_and_loads() -> None:
    (host,) = parse_qhost(fixture("qhost.xml"))
    assert host.name == "vm" and host.num_proc == 2
    assert host.mem_total_mb == round(23.5 * 1024)
    assert host.mem_used_mb == round(384.8)
    assert host.load_1 == pytest.approx(0.693359) and host.load_15 == pytest.approx(0.216797)
    (plain,) = parse_qhost(fixture("qhost_plain.xml"))
    assert plain.load_1 is None and plain.load_avg is not None


def test_snapshot_from_real_cell_output() -> None:
    snap = build_snapshot(
        parse_qhost(fixture("qhost.xml")),
        parse_qstat_queues(fixture("qstat_f.xml")),
        parse_qstat_jobs(fixture("qstat_jobs.xml")),
    )
    (node,) = snap.nodes
    assert (node.name, node.available, node.cores_total, node.cores_alloc) == ("vm", True, 2, 2)
    assert node.mem_total_mb == 24064 and node.mem_free_mb == 24064 - 385
    assert node.partitions == ("all.q",) and node.state == "ok"
    (part,) = snap.partitions
    assert (part.name, part.available, part.nodes_total, part.cores_total) == ("all.q", True, 1, 2)

    disabled = build_snapshot(
        parse_qhost(fixture("qhost.xml")), parse_qstat_queues(fixture("qstat_f_disabled.xml")), []
    )
    assert not disabled.nodes[0].available and disabled.nodes[0].state == "d"
    assert not disabled.partitions[0].available and disabled.partitions[0].state == "d"


@pytest.mark.parametrize(
    ("text", "mb"),
    [("23.5G", 24064), ("512.0M", 512), ("1.0T", 1048576), ("1.9G", 1946), ("2048K", 2), ("0.0", 0)],
)
def test_memory_units(text: str, mb: int) -> None:
    assert memory_mb(text) == mb


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("r", RUNNING),
        ("t", RUNNING),
        ("Rr", RUNNING),
        ("qw", PENDING),
        ("Rq", PENDING),
        ("hqw", HELD),
        ("hRwq", HELD),
        ("Eqw", HELD),
        ("Er", HELD),
        ("hr", RUNNING),
        ("hRr", RUNNING),
        ("ht", RUNNING),
        ("s", OTHER),
        ("S", OTHER),
        ("rs", OTHER),
        ("T", OTHER),
        ("dr", RUNNING),
        ("dt", RUNNING),
        ("dqw", OTHER),
        ("dhqw", OTHER),
    ],
)
def test_job_states(raw: str, state: str) -> None:
    assert job_state(raw) == state


def test_predecessors_hold_only_jobs_not_yet_running() -> None:
    assert job_state("qw", has_predecessors=True) == HELD
    assert job_state("hqw", has_predecessors=True) == HELD
    assert job_state("r", has_predecessors=True) == RUNNING


def test_hold_on_running_job_in_real_shape() -> None:
    """``qhold`` on a running job shows ``hr``: it still runs on its slots (captured file, state edited)."""
    jobs = by_id(
        parse_qstat_jobs(fixture("qstat_jobs.xml").replace("<state>r</state>", "<state>hr</state>", 1))
    )
    assert (jobs["2"].state, jobs["2"].raw_state, jobs["2"].reason) == (RUNNING, "hr", "")
    assert {jid for jid, j in jobs.items() if j.state == RUNNING} == {"2", "3"}


def test_constructed_eqw_and_execd_down_in_real_shape() -> None:
    """Shapes copied from the captured files; only values changed (a second host whose execd is down)."""
    jobs_xml = fixture("qstat_jobs.xml").replace("<state>qw</state>", "<state>Eqw</state>", 1)
    assert by_id(parse_qstat_jobs(jobs_xml))["4"].state == HELD
    down_host = """ <host name='node2'>
   <hostvalue name='arch_string'>lx-amd64</hostvalue>
   <hostvalue name='num_proc'>-</hostvalue>
   <hostvalue name='load_avg'>-</hostvalue>
   <hostvalue name='mem_total'>-</hostvalue>
   <hostvalue name='mem_used'>-</hostvalue>
 </host>
</qhost>"""
    hosts = parse_qhost(fixture("qhost.xml").replace("</qhost>", down_host))
    queues_xml = fixture("qstat_f.xml").replace(
        "<queue_info>",
        "<queue_info>\n    <Queue-List>\n      <name>all.q@node2</name>\n      <qtype>BI</qtype>\n"
        "      <slots_used>0</slots_used>\n      <slots_resv>0</slots_resv>\n"
        "      <slots_total>8</slots_total>\n      <state>au</state>\n    </Queue-List>",
        1,
    )
    snap = build_snapshot(hosts, parse_qstat_queues(queues_xml), [])
    node2 = next(n for n in snap.nodes if n.name == "node2")
    assert not node2.available and node2.cores_total == 8 and node2.state == "au"
    assert snap.partitions[0].cores_total == 10 and snap.partitions[0].available


@pytest.mark.parametrize(
    ("parser", "name", "command"),
    [
        (parse_qstat_jobs, "qstat_jobs.xml", "qstat -xml -r -u '*'"),
        (parse_qstat_queues, "qstat_f.xml", "qstat -f -xml"),
        (parse_qhost, "qhost.xml", "qhost -xml"),
    ],
)
def test_truncated_xml_is_a_parse_error_naming_the_command(parser: object, name: str, command: str) -> None:
    text = fixture(name)
    with pytest.raises(ParseError, match=command.replace("*", r"\*")):
        parser(text[: len(text) // 2])  # type: ignore[operator]
    with pytest.raises(ParseError, match=command.replace("*", r"\*")):
        parser("")  # type: ignore[operator]


def test_wrong_document_and_bad_values() -> None:
    with pytest.raises(ParseError, match="expected <job_info>"):
        parse_qstat_jobs(fixture("qhost.xml"))
    with pytest.raises(ParseError, match="slots_used"):
        parse_qstat_queues(fixture("qstat_f.xml").replace("<slots_used>2", "<slots_used>two"))
    with pytest.raises(ParseError, match="qhost -xml: host vm"):
        parse_qhost(fixture("qhost.xml").replace("23.5G", "lots"))
    with pytest.raises(ParseError, match=r"date \+%z"):
        parse_utc_offset("Mon Nov 23")
    assert parse_utc_offset("-0530\n") == timezone(-timedelta(hours=5, minutes=30))


class RecordingRunner:
    """Hands back captured outputs and records argv/env: checks command construction only."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        self.calls.append((list(argv), dict(env or {})))
        if argv[0] == "date":
            return "+0000\n"
        if argv[0].endswith("qhost"):
            return fixture("qhost.xml")
        return fixture("qstat_f.xml" if "-f" in argv else "qstat_jobs.xml")


def test_binaries_and_cell_from_config() -> None:
    dest = DestinationConfig(
        id="sge",
        scheduler="sge",
        host="local",
        ssh=SSHSettings(),
        sge=SGESettings(bin_dir="/opt/sge/bin/lx-amd64/", root="/opt/sge", cell="galaxy"),
    )
    runner = RecordingRunner()
    SGEAdapter(dest).collect(runner)
    argvs = [argv for argv, _ in runner.calls]
    assert ["/opt/sge/bin/lx-amd64/qstat", "-xml", "-r", "-u", "*"] in argvs
    assert all(env == {"SGE_ROOT": "/opt/sge", "SGE_CELL": "galaxy"} for _, env in runner.calls)
    plain = RecordingRunner()
    SGEAdapter(DestinationConfig(id="s", scheduler="sge", host="local", ssh=SSHSettings())).collect(plain)
    assert {argv[0] for argv, _ in plain.calls} == {"date", "qstat", "qhost"}
    assert all(env == {} for _, env in plain.calls)


# --- end to end: real SGE cell, real sshd, non-root user ---------------------------------------------------


def test_collect_over_ssh_from_live_cell(sge: SGECluster, sshd: SSHServer) -> None:
    dest = sshd.destination(
        "sge_local",
        "sge",
        env={"SGE_QMASTER_PORT": str(sge.qmaster_port), "SGE_EXECD_PORT": str(sge.execd_port)},
        sge=sge.settings(),
    )
    adapter = make_adapter(dest)
    assert isinstance(adapter, SGEAdapter)
    with open_transport(dest) as transport:
        snap = adapter.collect(transport)

    jobs = by_id(snap.jobs)
    ids = sge.jobs
    assert {jobs[j].state for j in ids["running"]} == {RUNNING}
    assert jobs[ids["pending"][0]].state == PENDING and jobs[ids["pending"][0]].mem_mb == 2048
    assert {jobs[f"{ids['array'][0]}_{t}"].state for t in (1, 2, 3)} == {PENDING}
    assert jobs[ids["held"][0]].state == HELD and jobs[ids["held"][0]].reason == "hold"
    assert jobs[ids["dependent"][0]].state == HELD and jobs[ids["dependent"][0]].reason == "dependency"
    assert jobs[ids["error"][0]].raw_state == "Eqw" and jobs[ids["error"][0]].state == HELD
    running = jobs[ids["running"][0]]
    assert running.name == "g201_bwa_bob" and running.nodes == sge.host
    assert running.start_time is not None and running.start_time.tzinfo is UTC
    assert abs(running.start_time - datetime.now(UTC)) < timedelta(minutes=10)  # zone applied, not hours off

    (node,) = snap.nodes
    assert node.name == sge.host and node.available
    assert (node.cores_total, node.cores_alloc) == (2, 2)
    assert node.mem_total_mb > 0 and node.mem_free_mb is not None and node.load_1 is not None
    (part,) = snap.partitions
    assert (part.name, part.cores_total, part.available) == ("all.q", 2, True)


def test_unreachable_qmaster_is_a_transport_error_naming_qstat(sge: SGECluster, sshd: SSHServer) -> None:
    dest = sshd.destination("sge_down", "sge", env={"SGE_QMASTER_PORT": str(free_port())}, sge=sge.settings())
    with open_transport(dest) as transport, pytest.raises(TransportError, match="qstat"):
        SGEAdapter(dest).collect(transport)


def test_cli_collect_and_status_on_live_cell(sge: SGECluster, sshd: SSHServer, tmp_path: Path) -> None:
    """The whole path an operator uses: config file -> metasched collect over SSH -> store -> status."""
    config = tmp_path / "metasched.yml"
    config.write_text(
        f"database: {tmp_path / 'state.db'}\n"
        f"ssh: {{user: {sshd.user}, key_file: {sshd.key_file}, known_hosts: {sshd.known_hosts}}}\n"
        "destinations:\n"
        "  - id: sge_local\n"
        "    scheduler: sge\n"
        f"    host: {sshd.host}\n"
        f"    port: {sshd.port}\n"
        f"    env: {{SGE_QMASTER_PORT: '{sge.qmaster_port}'}}\n"
        f"    sge: {{bin_dir: {sge.bin_dir}, root: {sge.root}, cell: {sge.cell}}}\n"
    )
    metasched = [sys.executable, "-m", "metasched"]
    collect = subprocess.run([*metasched, "collect", "-c", str(config)], capture_output=True, text=True)
    assert collect.returncode == 0, collect.stderr
    status = subprocess.run(
        [*metasched, "status", "--json", "-c", str(config)], capture_output=True, text=True, check=True
    )
    (row,) = json.loads(status.stdout)
    assert row["id"] == "sge_local" and row["reachable"] and row["error"] is None
    assert (row["cores_total"], row["cores_free"], row["nodes_total"]) == (2, 0, 1)
    # 1 pending job + 3 pending array tasks are demand; Eqw, hold and -hold_jid jobs are not.
    assert (row["jobs_running"], row["jobs_queued"]) == (2, 4)
