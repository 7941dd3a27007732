"""Slurm adapter: parsers on output captured from the real test cluster (tests/capture_fixtures.py),
and collect() against the real cluster locally and over real SSH as the non-root user.

Node state flags that this cluster cannot produce (powered off ``~``, powering up ``#``, pending power
down ``!``, powering down ``%``, maintenance ``$``, reboot ``@``/``^``, planned ``-``, fail) are tested on
lines built from a captured sinfo line with only the two state fields replaced, in the exact format
``sinfo -O StateLong,StateComplete`` prints them (lower-case base state + suffix; ``base+FLAG+FLAG``).
Newer Slurm's ``gres/gpu:a100=2`` spelling and GPU index lists are likewise constructed strings.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metasched.domain.errors import ParseError
from metasched.domain.jobs import HELD, OTHER, PENDING, RUNNING, Job, Node
from metasched.schedulers.registry import make_adapter
from metasched.schedulers.slurm import (
    SEP,
    SQUEUE_FIELDS,
    SlurmAdapter,
    parse_partitions,
    parse_sinfo,
    parse_squeue,
    partitions_command,
    sinfo_command,
    squeue_command,
)
from metasched.schedulers.slurm_values import expand_array_indices, gpu_count, job_state, mem_mb, parse_time
from metasched.settings import DestinationConfig, SSHSettings
from metasched.transport.local import LocalTransport
from metasched.transport.ssh import SSHTransport
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHServer

FIX = Path(__file__).parent / "fixtures" / "slurm"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def by_id(jobs: Iterable[Job]) -> dict[str, Job]:
    return {j.job_id: j for j in jobs}


def by_name(nodes: Iterable[Node]) -> dict[str, Node]:
    return {n.name: n for n in nodes}


# --- squeue -----------------------------------------------------------------------------------------


def test_squeue_captured_states_and_fields() -> None:
    jobs = by_id(parse_squeue(fixture("squeue.txt")))
    running = {i for i, j in jobs.items() if j.state == RUNNING}
    pending = {i for i, j in jobs.items() if j.state == PENDING}
    held = {i for i, j in jobs.items() if j.state == HELD}
    assert running == {"1", "2", "3", "4_1", "4_2"}
    # the pending array range 4_[3-6%2] counts as four jobs of demand, ids as the tasks will have them
    assert pending == {"4_3", "4_4", "4_5", "4_6", "7"}
    assert held == {"8", "9"}  # JobHeldUser, Dependency

    alice = jobs["1"]
    assert alice.name == "g101_bowtie2_alice"
    assert (alice.partition, alice.user, alice.raw_state, alice.reason) == ("debug", "root", "RUNNING", "")
    assert (alice.cores, alice.mem_mb, alice.gpus, alice.nodes) == (1, 500, 0, "n1")
    assert alice.submit_time is not None and alice.submit_time.tzinfo is UTC
    assert alice.start_time is not None and alice.start_time >= alice.submit_time

    assert jobs["2"].name == "odd | name  with spaces"
    assert jobs["2"].mem_mb == 1024  # "1G"
    assert (jobs["3"].partition, jobs["3"].gpus) == ("long", 1)  # --gres=gpu:1 -> tres-per-node gres:gpu:1

    big = jobs["7"]
    assert (big.reason, big.cores, big.mem_mb, big.start_time) == ("Resources", 4, 1024, None)
    assert jobs["4_5"].reason == "JobArrayTaskLimit" and jobs["4_5"].mem_mb == 100
    assert jobs["9"].reason == "Dependency" and jobs["8"].reason == "JobHeldUser"
    # no --mem: tres-alloc says what Slurm will give (the whole node here), MinMemory says 0
    assert jobs["8"].mem_mb == 4000


def test_squeue_captured_more_variants() -> None:
    jobs = parse_squeue(fixture("squeue_more.txt"))
    names = {j.name: j for j in jobs}
    assert names["admin_held"].state == HELD and names["admin_held"].reason == "JobHeldAdmin"
    later = names["later"]
    assert (later.state, later.reason, later.start_time) == (HELD, "BeginTime", None)
    assert names["per_cpu_mem"].mem_mb == 600  # --mem-per-cpu=300 -c 2: the job's total
    assert names["gpus_per_job"].gpus == 2  # --gpus=2 (tres-per-job)
    assert names["gres_per_node"].gpus == 2  # --gres=gpu:2 (tres-per-node)
    assert names["gpus_per_task"].gpus == 2  # -n 2 --gpus-per-task=1
    assert names["gpus_per_job"].state == PENDING  # a long reason text with commas is still demand
    assert f"sep{SEP}in name | x" in names  # the separator inside the last field is kept
    assert any(n == "long_" + "x" * 195 for n in names)


def test_squeue_captured_backfill_estimates() -> None:
    """Both nodes full of --time jobs: Slurm's backfill expects the pending ones to start when they end."""
    jobs = by_id(parse_squeue(fixture("squeue_backfill.txt")))
    fill_1, fill_2 = jobs["1"], jobs["2"]
    assert fill_1.state == fill_2.state == RUNNING
    assert fill_1.start_estimate is None and fill_1.estimated_at is None  # started: start_time instead
    assert fill_1.start_time is not None
    for jid, reason in (("3", "Resources"), ("4", "Priority")):
        job = jobs[jid]
        assert (job.state, job.reason) == (PENDING, reason)
        assert job.start_estimate is not None and job.start_estimate.tzinfo is UTC
        assert job.estimated_at is not None and job.estimated_at.tzinfo is UTC
        assert job.submit_time is not None and job.estimated_at >= job.submit_time
        # expected when the filling jobs hit their 30-minute limit
        assert job.start_estimate - fill_1.start_time == timedelta(minutes=30)
        assert job.start_time is None  # not started: the estimate is no start time
    assert (jobs["3"].cores, jobs["4"].cores) == (4, 1)
    held = jobs["5"]  # sbatch -H: not demand, and Slurm has no estimate for it
    assert held.state == HELD and held.start_estimate is None and held.estimated_at is None


def test_squeue_without_estimates() -> None:
    """No time limits (the standard mix): N/A start for pending jobs; a --begin time is no estimate."""
    for name in ("squeue.txt", "squeue_more.txt"):
        assert all(j.start_estimate is None and j.estimated_at is None for j in parse_squeue(fixture(name)))
    later = {j.name: j for j in parse_squeue(fixture("squeue_more.txt"))}["later"]
    assert later.state == HELD and later.start_estimate is None  # its StartTime is the --begin time


def test_squeue_estimate_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What other clients print: Unknown, N/A, or local time without zone (no SLURM_TIME_FORMAT)."""
    start_i, eval_i = SQUEUE_FIELDS.index("StartTime"), SQUEUE_FIELDS.index("LastSchedEval")
    line = fixture("squeue_backfill.txt").splitlines()[1]
    for start, evaluated in (("Unknown", "2026-12-04T08:00:00+0000"), ("N/A", "N/A")):
        fields = line.split(SEP)
        fields[start_i], fields[eval_i] = start, evaluated
        (job,) = parse_squeue(SEP.join(fields))
        assert (job.state, job.start_estimate, job.estimated_at) == (PENDING, None, None)
    fields = line.split(SEP)
    fields[start_i], fields[eval_i] = "2026-07-01T12:30:00", "Unknown"
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        (job,) = parse_squeue(SEP.join(fields))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert job.start_estimate == datetime(2026, 7, 1, 10, 30, tzinfo=UTC)
    assert job.estimated_at is None  # unknown: the store takes the collect time
    fields[start_i] = "soon"
    with pytest.raises(ParseError, match=r"squeue: line 1: cannot read timestamp 'soon'"):
        parse_squeue(SEP.join(fields))


def test_squeue_empty_queue() -> None:
    assert fixture("squeue_empty.txt") == ""
    assert parse_squeue("") == []
    assert parse_squeue("\n") == []


@pytest.mark.parametrize("name", ["squeue.txt", "squeue_more.txt"])
def test_squeue_truncated_output_is_a_parse_error(name: str) -> None:
    text = fixture(name)
    lines = text.splitlines()
    for cut in (len(text) - 2, len(text) - len(lines[-1]) // 2, len(lines[0]) // 3):
        with pytest.raises(ParseError, match=r"^squeue: line \d+: "):
            parse_squeue(text[:cut])


def test_squeue_garbage_names_command_and_line() -> None:
    good = fixture("squeue.txt").splitlines()[0]
    with pytest.raises(ParseError, match=r"squeue: line 2: incomplete line"):
        parse_squeue(good + "\nslurm_load_jobs error: Socket timed out on send/recv operation\n")
    fields = good.split(SEP)
    fields[5] = "many"  # NumCPUs
    with pytest.raises(ParseError, match=r"squeue: line 1: NumCPUs is not a number: 'many'"):
        parse_squeue(SEP.join(fields))
    fields = good.split(SEP)
    fields[13] = "yesterday"  # SubmitTime
    with pytest.raises(ParseError, match=r"squeue: line 1: cannot read timestamp 'yesterday'"):
        parse_squeue(SEP.join(fields))


def _squeue_line(job_id: str, state: str = "PENDING", reason: str = "Priority", name: str = "x") -> str:
    """A captured squeue line with id/state/reason/name replaced."""
    fields = fixture("squeue.txt").splitlines()[1].split(SEP)
    fields[0], fields[3], fields[4] = job_id, state, reason
    fields[SQUEUE_FIELDS.index("Name")] = name
    return SEP.join(fields)


def test_squeue_counts_with_unit_suffix() -> None:
    """Clients without --noconvert print big counts as "2K"; read them anyway."""
    fields = _squeue_line("30").split(SEP)
    fields[5] = "2K"  # NumCPUs
    (job,) = parse_squeue(SEP.join(fields))
    assert job.cores == 2048


def test_squeue_array_ranges() -> None:
    lines = [
        _squeue_line("20_[1,3,5-7]"),
        _squeue_line("21_[1-9:2%3]"),
        _squeue_line("22_[1,2,3,4,5,6,7,8,9,10,11,...]"),  # what Slurm prints when it shortens
        _squeue_line("23_5", state="RUNNING", reason="None"),
    ]
    ids = [j.job_id for j in parse_squeue("\n".join(lines) + "\n")]
    assert ids == [
        "20_1", "20_3", "20_5", "20_6", "20_7",
        "21_1", "21_3", "21_5", "21_7", "21_9",
        "22_[1,2,3,4,5,6,7,8,9,10,11,...]",
        "23_5",
    ]  # fmt: skip


def test_expand_array_indices() -> None:
    assert expand_array_indices("4-10%2") == [4, 5, 6, 7, 8, 9, 10]
    assert expand_array_indices("0") == [0]
    assert expand_array_indices("1-1000000", limit=5) == [1, 2, 3, 4, 5]
    assert expand_array_indices("1,...") is None
    assert expand_array_indices("9-1") is None


@pytest.mark.parametrize(
    ("raw", "reason", "expected"),
    [
        ("PENDING", "Priority", PENDING),
        ("PENDING", "Resources", PENDING),
        ("PENDING", "QOSMaxCpuPerUserLimit", PENDING),
        ("PENDING", "JobHeldUser", HELD),
        ("PENDING", "JobHeldAdmin", HELD),
        ("PENDING", "Dependency", HELD),
        ("PENDING", "DependencyNeverSatisfied", HELD),
        ("PENDING", "BeginTime", HELD),
        ("REQUEUE_HOLD", "JobHeldAdmin", HELD),
        ("RUNNING", "", RUNNING),
        ("COMPLETING", "", RUNNING),
        ("CONFIGURING", "", RUNNING),
        ("SUSPENDED", "", OTHER),
        ("PREEMPTED", "", OTHER),
        ("COMPLETED", "", OTHER),
    ],
)
def test_job_state(raw: str, reason: str, expected: str) -> None:
    assert job_state(raw, reason) == expected


@pytest.mark.parametrize(
    ("text", "mb"),
    [("0", 0), ("2000", 2000), ("2000M", 2000), ("4G", 4096), ("1.50G", 1536), ("2T", 2 * 1024 * 1024),
     ("2048K", 2), ("N/A", 0), ("512MB", 512)],
)  # fmt: skip
def test_mem_units(text: str, mb: int) -> None:
    assert mem_mb(text) == mb


def test_mem_garbage() -> None:
    with pytest.raises(ParseError, match="cannot read memory value '4 GB'"):
        mem_mb("4 GB")


@pytest.mark.parametrize(
    ("spec", "n"),
    [
        ("N/A", 0),
        ("(null)", 0),
        ("gres:gpu:2", 2),
        ("gres:gpu", 1),
        ("gres/gpu:a100=2", 2),
        ("gres/gpu=4", 4),
        ("gres:gpu:tesla:2(S:0-1)", 2),
        ("gpu:a100:1(IDX:0),gpu:v100:0(IDX:N/A)", 1),
        ("gpu:a100:2(IDX:0,2),gpu:v100:1(IDX:1)", 3),
        ("gres:mps:100,gres:gpu:1", 1),
        ("gpu:0", 0),
    ],
)
def test_gpu_count(spec: str, n: int) -> None:
    assert gpu_count(spec) == n


def test_time_with_offset_and_naive_local(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_time("2026-11-23T20:47:23+0100") == datetime(2026, 11, 23, 19, 47, 23, tzinfo=UTC)
    assert parse_time("N/A") is None and parse_time("Unknown") is None
    # Without an offset Slurm printed the head node's local time: taken as this machine's zone.
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert parse_time("2026-07-01T12:00:00") == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()


# --- sinfo ------------------------------------------------------------------------------------------


def test_sinfo_captured() -> None:
    nodes = parse_sinfo(fixture("sinfo.txt"))
    assert [n.name for n in nodes] == ["n1", "n2", "n3"]  # one entry per node, not per partition
    n = by_name(nodes)
    assert sorted(n["n1"].partitions) == ["closed", "debug"]
    assert set(n["n2"].partitions) == {"debug", "long"}
    assert (n["n1"].state, n["n1"].available, n["n1"].cores_total, n["n1"].cores_alloc) == (
        "mixed",
        True,
        4,
        2,
    )
    assert (n["n1"].mem_total_mb, n["n1"].mem_alloc_mb) == (4000, 1524)
    assert n["n1"].mem_free_mb is not None and n["n1"].load_1 is not None
    assert (n["n2"].cores_alloc, n["n2"].gpus_total, n["n2"].gpus_alloc, n["n2"].mem_alloc_mb) == (
        3,
        2,
        1,
        700,
    )
    down = n["n3"]
    assert down.available is False and down.state.startswith("down")
    assert (down.reason, down.mem_free_mb, down.load_1, down.cores_alloc) == ("no slurmd", None, None, 0)


def test_sinfo_captured_drain() -> None:
    draining = by_name(parse_sinfo(fixture("sinfo_draining.txt")))
    assert draining["n2"].state == "draining" and not draining["n2"].available
    assert draining["n2"].reason == "disk | full, replace x=1"
    assert draining["n1"].available
    drained = by_name(parse_sinfo(fixture("sinfo_drained.txt")))
    assert [(n.state, n.available) for n in drained.values()] == [
        ("drained", False),
        ("drained", False),
        ("down", False),
    ]
    assert drained["n1"].reason == "maintenance"


def _sinfo_with_state(state_long: str, state_complete: str) -> Node:
    fields = fixture("sinfo.txt").splitlines()[0].split(SEP)
    fields[2], fields[3] = state_long, state_complete
    (node,) = parse_sinfo(SEP.join(fields) + "\n")
    return node


@pytest.mark.parametrize(
    ("state_long", "state_complete", "available"),
    [
        ("idle", "idle", True),
        ("mixed", "mixed", True),
        ("allocated", "allocated", True),
        ("idle#", "idle+powering_up", True),
        ("mixed-", "mixed+planned", True),
        ("completing", "allocated+completing", True),
        ("idle~", "idle+powered_down", False),
        ("idle!", "idle+power_down", False),
        ("idle%", "idle+powering_down", False),
        ("maint$", "idle+maint", False),
        ("mixed@", "mixed+reboot_requested", False),
        ("reboot^", "idle+reboot_issued", False),
        ("idle*", "idle+not_responding", False),
        ("down*", "down+not_responding", False),
        ("down~", "down+cloud+powered_down", False),
        ("drained*", "idle+drain+not_responding", False),
        ("draining", "mixed+drain", False),
        ("fail", "idle+fail", False),
        ("failing", "allocated+fail", False),
        ("unknown", "unknown", False),
        ("inval", "idle+invalid_reg", False),
    ],
)
def test_node_state_flags(state_long: str, state_complete: str, available: bool) -> None:
    node = _sinfo_with_state(state_long, state_complete)
    assert node.available is available
    assert node.state == state_long  # the scheduler's own text, flags kept


def test_sinfo_truncated_and_garbage() -> None:
    text = fixture("sinfo.txt")
    with pytest.raises(ParseError, match=r"^sinfo: line 6: incomplete line"):
        parse_sinfo(text[:-5])
    with pytest.raises(ParseError, match=r"^sinfo: line 1: expected 12 fields, got 3"):
        parse_sinfo(f"n1{SEP}debug{SEP}idle{SEP}\n")
    fields = text.splitlines()[0].split(SEP)
    fields[4] = "2/2/4"
    with pytest.raises(ParseError, match=r"sinfo: line 1: CPUsState is not A/I/O/T"):
        parse_sinfo(SEP.join(fields))


# --- partitions -------------------------------------------------------------------------------------


def test_partitions_captured() -> None:
    parts = {p.name: p for p in parse_partitions(fixture("partitions.txt"))}
    assert list(parts) == ["debug", "long", "closed"]
    debug, long_, closed = parts["debug"], parts["long"], parts["closed"]
    assert (debug.is_default, debug.state, debug.available) == (True, "up", True)
    assert (debug.nodes_total, debug.cores_total) == (3, 12)
    assert (long_.is_default, long_.nodes_total, long_.cores_total) == (False, 2, 8)
    assert long_.limits["MaxTime"] == "2-00:00:00"
    assert long_.limits["MaxNodes"] == "1"
    assert long_.limits["MaxCPUsPerNode"] == "4"
    assert long_.limits["DefMemPerCPU"] == "500"
    assert debug.limits["MaxTime"] == "UNLIMITED"
    assert (closed.state, closed.available) == ("inactive", False)
    down = {p.name: p for p in parse_partitions(fixture("partitions_down.txt"))}["long"]
    assert (down.state, down.available) == ("down", False)


def test_partitions_empty_truncated_garbage() -> None:
    assert parse_partitions("No partitions in the system\n") == []
    assert parse_partitions("") == []
    text = fixture("partitions.txt")
    first = text.splitlines()[0]
    with pytest.raises(ParseError, match=r"scontrol show partition: line 1: missing State, TotalCPUs"):
        parse_partitions(first[: first.index("State=UP")])
    with pytest.raises(ParseError, match=r"scontrol show partition: line 1: not Key=Value"):
        parse_partitions("slurm_load_partitions: Unable to contact slurm controller (connect failure)")


# --- commands ---------------------------------------------------------------------------------------


def test_commands_pin_format_and_environment() -> None:
    for argv in (squeue_command(), sinfo_command(), partitions_command()):
        assert argv[0] == "env"
        assert "SLURM_TIME_FORMAT=%FT%T%z" in argv
        for var in ("SQUEUE_FORMAT", "SQUEUE_FORMAT2", "SQUEUE_ARRAY", "SQUEUE_USERS", "SINFO_PARTITION"):
            assert argv[argv.index(var) - 1] == "-u"
    assert squeue_command()[-2] == "-O" and sinfo_command()[-2] == "-O"


# --- against the real cluster -----------------------------------------------------------------------

# A user's environment that would change squeue/sinfo output if the adapter did not pin it.
HOSTILE_ENV = {
    "SQUEUE_FORMAT": "%i",
    "SQUEUE_FORMAT2": "JobID",
    "SQUEUE_ARRAY": "1",
    "SQUEUE_STATES": "RUNNING",
    "SQUEUE_USERS": "nobody",
    "SQUEUE_PARTITION": "long",
    "SINFO_FORMAT": "%N",
    "SINFO_PARTITION": "closed",
    "SLURM_TIME_FORMAT": "relative",
}


def _check_snapshot(slurm: SlurmCluster, nodes: Iterable[Node], jobs: Iterable[Job]) -> None:
    assert slurm.jobs is not None
    n = by_name(nodes)
    assert set(n) == {"n1", "n2", "n3"}
    assert n["n3"].available is False and n["n3"].reason == "no slurmd"
    assert n["n1"].available and n["n2"].available
    assert n["n2"].gpus_total == 2
    mine = slurm.jobs.all_ids
    ours = [j for j in jobs if j.job_id.split("_")[0] in mine]  # other tests may add jobs
    states = {j.job_id: j.state for j in ours}
    arr = slurm.jobs.array
    assert sorted(i for i, s in states.items() if s == RUNNING) == sorted(
        [*slurm.jobs.running.values(), f"{arr}_1", f"{arr}_2"]
    )
    assert sorted(i for i, s in states.items() if s == PENDING) == sorted(
        [slurm.jobs.pending, *(f"{arr}_{i}" for i in range(3, 7))]
    )
    assert sorted(i for i, s in states.items() if s == HELD) == sorted(
        [slurm.jobs.held, slurm.jobs.dependent]
    )
    named = {j.name: j for j in ours}
    assert named["odd | name  with spaces"].state == RUNNING
    assert named["gpu_job"].gpus == 1
    now = datetime.now(UTC)
    for j in ours:
        assert j.submit_time is not None and abs((now - j.submit_time).total_seconds()) < 3600


@pytest.fixture
def local_dest(slurm: SlurmCluster) -> Iterator[DestinationConfig]:
    yield DestinationConfig(
        id="slurm_local", scheduler="slurm", host="local", ssh=SSHSettings(), env={**slurm.env, **HOSTILE_ENV}
    )


def test_collect_real_cluster_locally(slurm: SlurmCluster, local_dest: DestinationConfig) -> None:
    adapter = make_adapter(local_dest)
    assert isinstance(adapter, SlurmAdapter)
    with LocalTransport(local_dest) as runner:
        snap = adapter.collect(runner)
    _check_snapshot(slurm, snap.nodes, snap.jobs)
    parts = {p.name: p for p in snap.partitions}
    assert set(parts) == {"debug", "long", "closed"}
    assert parts["debug"].is_default and parts["debug"].available
    assert not parts["closed"].available


def test_hostile_environment_really_changes_plain_squeue(slurm: SlurmCluster) -> None:
    """Guard for the test above: the variables do change a plain squeue, so the adapter must pin them."""
    env = {**os.environ, **slurm.env, **HOSTILE_ENV}
    out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, check=True).stdout
    assert slurm.jobs is not None and slurm.jobs.pending not in out.split()


def test_collect_real_cluster_over_ssh(slurm: SlurmCluster, sshd: SSHServer) -> None:
    """As the non-root ssh user: the \\x1f separators survive shlex quoting, SSH and the login shell."""
    dest = sshd.destination("slurm_ssh", "slurm", env={**slurm.env, **HOSTILE_ENV})
    with SSHTransport(dest) as runner:
        snap = SlurmAdapter(dest).collect(runner)
    _check_snapshot(slurm, snap.nodes, snap.jobs)
    assert len(snap.partitions) == 3


def test_collect_sees_a_new_job_and_its_cancellation(
    slurm: SlurmCluster, local_dest: DestinationConfig
) -> None:
    jid = slurm.sbatch("g103_fastqc_carol", cpus=4, mem="10M")
    try:
        slurm.wait_state(jid, "PENDING")
        with LocalTransport(local_dest) as runner:
            job = by_id(SlurmAdapter(local_dest).collect(runner).jobs)[jid]
        assert (job.state, job.cores, job.mem_mb, job.name) == (PENDING, 4, 10, "g103_fastqc_carol")
    finally:
        slurm.scancel(jid)
    wait = time.monotonic() + 20
    while jid in slurm.states() and time.monotonic() < wait:
        time.sleep(0.1)
    with LocalTransport(local_dest) as runner:
        assert jid not in by_id(SlurmAdapter(local_dest).collect(runner).jobs)
