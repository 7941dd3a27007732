"""Enforcement against real job processes: a real Slurm job of the ssh user ``mstest`` reniced over the
real sshd (its nice value read back with ``ps``), ``--dry-run`` printing without acting, the collect
hook of ``enforce: true``, and real SGE jobs found through the execd spool (run locally as root).

Parsers of ``scontrol listpids`` / ``ps`` / ``qconf -sconf`` are checked on output captured from the
real daemons here (Slurm 22.05, SGE 8.1.9, procps).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import pytest
import yaml

from metasched.app.collect import run_enforcement
from metasched.domain.jobs import Snapshot
from metasched.domain.ports import HostRunner, JobPids, NodeRunners, Runner
from metasched.policy import recent_actions
from metasched.policy.enforce import PS_ARGV, Wiring, enforce, family, parse_ps
from metasched.schedulers.registry import make_adapter
from metasched.schedulers.sge import spool_dir
from metasched.schedulers.slurm_pids import parse_listpids
from metasched.settings import load_config
from metasched.store import Store
from metasched.transport import open_transport
from tests.infra.procs import wait_for
from tests.infra.sge import SGECluster
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHServer
from tests.test_policy_ranking import _cli

LISTPIDS = """\
PID      JOBID    STEPID   LOCALID GLOBALID
8625     1        batch    0       0
8626     1        batch    -       -
 """


def test_parsers_on_real_output() -> None:
    assert parse_listpids(LISTPIDS) == [8625, 8626]
    ps = "    1     0     0 -10\n 8625  8620  8625  10\n   17     2     0   -\n"
    assert parse_ps(ps) == {1: (0, 0, -10), 8625: (8620, 8625, 10)}
    sconf = "#global:\nexecd_spool_dir              /var/spool/gridengine/execd\nmailer /bin/true\n"
    assert spool_dir(sconf) == "/var/spool/gridengine/execd"


def nice_of(pid: int) -> int:
    return int(subprocess.run(["ps", "-o", "ni=", "-p", str(pid)], capture_output=True, text=True).stdout)


def _submit_as_mstest(slurm: SlurmCluster, name: str) -> str:
    """A job of the ssh user, so it may renice its own processes without sudo."""
    argv = ["runuser", "-u", "mstest", "--", "env", *(f"{k}={v}" for k, v in slurm.env.items())]
    argv += ["sbatch", "--parsable", "-J", name, "-c", "1", "--mem", "10M", "-t", "10", "-w", "n1"]
    argv += ["-o", "/dev/null", "-D", "/tmp", "--wrap", "sleep 600"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    job = out.stdout.strip().split(";")[0]
    # ahead of the fixture's pending whole-node job, which would otherwise keep it waiting (root may)
    slurm.run(["scontrol", "update", f"JobId={job}", "Priority=4294967000"])
    slurm.wait_state(job, "RUNNING")
    return job


def _pids(slurm: SlurmCluster, job: str) -> list[int]:
    def found() -> bool:
        return len(parse_listpids(slurm.run(["scontrol", "listpids", job, "n1"], check=False))) >= 2

    wait_for(found, 20, f"the processes of job {job}")  # the batch script and its sleep
    return parse_listpids(slurm.run(["scontrol", "listpids", job, "n1"]))


def _config(tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, policy: dict[str, Any]) -> Path:
    ssh = {
        "user": sshd.user,
        "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts),
        "port": sshd.port,
    }
    data = {
        "database": str(tmp_path / "state.db"),
        "destinations": [
            {"id": "slurm_a", "scheduler": "slurm", "host": sshd.host, "env": slurm.env, **ssh},
            {"id": "hp", "scheduler": "node", "host": sshd.host, **ssh},
        ],
        "policies": [{"destinations": ["slurm_a", "hp"], **policy}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_slurm_job_reniced_over_ssh(
    tmp_path: Path,
    sshd: SSHServer,
    slurm: SlurmCluster,
    env: dict[str, str],
) -> None:
    job = _submit_as_mstest(slurm, "policy_victim")
    try:
        pids = _pids(slurm, job)
        assert [nice_of(p) for p in pids] == [0] * len(pids)
        config = _config(tmp_path, sshd, slurm, {"name": "best_effort", "high_priority": "hp", "nice": 10})

        # dry run: the exact command, nothing changed, nothing recorded
        res = _cli(["enforce", "--dry-run", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        expected = f"renice -n 10 -p {' '.join(map(str, pids))}"
        assert f"{expected}  # on {sshd.host}:{sshd.port}: slurm_a job {job} on n1" in res.stdout
        assert [nice_of(p) for p in pids] == [0] * len(pids)
        with Store.open(str(tmp_path / "state.db")) as store:
            assert recent_actions(store) == []

        # for real: mstest's own job is reniced; the fixture's root jobs cannot be (recorded as failed)
        res = _cli(["enforce", "--json", "-c", str(config)], env)
        report = json.loads(res.stdout)
        mine = [a for a in report["actions"] if a["job"] == job]
        assert len(mine) == 1 and mine[0]["ok"], report
        assert mine[0]["command"] == expected and mine[0]["host"] == f"{sshd.host}:{sshd.port}"
        assert [nice_of(p) for p in pids] == [10] * len(pids)
        others = [a for a in report["actions"] if a["job"] != job]
        assert all(not a["ok"] and "Operation not permitted" in (a["error"] or "") for a in others), [
            (a["ok"], a["error"]) for a in others
        ]
        assert res.returncode == (3 if others else 0)

        # recorded, shown in status; a second run leaves the job alone (already at its nice value)
        status = json.loads(_cli(["status", "--json", "-c", str(config)], env).stdout)
        row = {r["id"]: r for r in status}["slurm_a"]
        assert row["policy"] == {"group": "slurm_a", "name": "best_effort", "source": "config"}
        assert row["last_enforced"]["destination"] == "slurm_a"
        cfg = load_config(config, {})
        with Store.open(str(tmp_path / "state.db")) as store:
            kept = recent_actions(store)
            again = run_enforcement(cfg, store)
            assert not [a for a in again.actions if a.job == job]
            assert recent_actions(store) == kept  # the same failures again are not recorded twice

        # shared at runtime with enforce: true: collect renices to round((1 - 30/100) x 19) = 13
        config = _config(
            tmp_path, sshd, slurm, {"name": "shared", "weights": {"slurm_a": 30, "hp": 70}, "enforce": True}
        )
        res = _cli(["collect", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        assert [nice_of(p) for p in pids] == [13] * len(pids)
        assert "enforce: hp" not in res.stderr
        res = _cli(["policy", "show", "-c", str(config)], env)
        assert f"slurm_a job {job} on n1: renice -n 13 -p" in res.stdout

        # head node local (root), Slurm node n1 reached as the policy's `nodes` destination over ssh
        data = yaml.safe_load(config.read_text())
        data["destinations"][0]["host"] = "local"
        data["destinations"].append({**data["destinations"][1], "id": "n1"})
        data["policies"][0] |= {"name": "best_effort", "high_priority": "hp", "nice": 15, "nodes": ["n1"]}
        config.write_text(yaml.safe_dump(data))
        with Store.open(str(tmp_path / "state.db")) as store:
            report = run_enforcement(load_config(config, {}), store)
        (mine,) = [a for a in report.actions if a.job == job]
        assert mine.ok and mine.host == f"{sshd.host}:{sshd.port}", mine
        assert [nice_of(p) for p in pids] == [15] * len(pids)
    finally:
        slurm.scancel(job)


def test_enforce_off_by_default_in_collect(
    tmp_path: Path,
    sshd: SSHServer,
    slurm: SlurmCluster,
    env: dict[str, str],
) -> None:
    config = _config(tmp_path, sshd, slurm, {"name": "best_effort", "high_priority": "hp"})
    res = _cli(["collect", "-c", str(config)], env)
    assert res.returncode == 0, res.stderr
    with Store.open(str(tmp_path / "state.db")) as store:
        assert recent_actions(store) == []


def test_sge_jobs_found_through_the_execd_spool(tmp_path: Path, sge: SGECluster) -> None:
    """The fixture's running jobs (root's), reached with ``host: local`` as root: job_pid from
    ``<execd_spool_dir>/<host>/active_jobs/<job>.<task>/job_pid``, the whole process group reniced."""
    data = {
        "database": str(tmp_path / "state.db"),
        "destinations": [
            {
                "id": "sge_b",
                "scheduler": "sge",
                "host": "local",
                "env": {k: v for k, v in sge.env.items() if k not in ("SGE_ROOT", "SGE_CELL")},
                "sge": {"bin_dir": str(sge.bin_dir), "root": str(sge.root), "cell": sge.cell},
            },
            {"id": "hp", "scheduler": "node", "host": "local"},
        ],
        "policies": [
            {"name": "best_effort", "destinations": ["sge_b", "hp"], "high_priority": "hp", "nice": 7}
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, {})
    with Store.open(str(tmp_path / "state.db")) as store:
        report = run_enforcement(cfg, store)
    running = sge.jobs["running"]
    done = {a.job: a for a in report.actions}
    assert set(running) <= set(done), (report.actions, report.notes)
    spool = Path(spool_dir(sge.run("qconf", "-sconf")) or "")
    for job in running:
        action = done[job]
        assert action.ok, action.error
        (leader_file,) = spool.glob(f"*/active_jobs/{job}.1/job_pid")
        leader = int(leader_file.read_text())
        assert leader in action.pids
        assert all(nice_of(p) == 7 for p in action.pids)
        assert os.getpgid(leader) == leader


@pytest.mark.parametrize("name", ["exclusive"])
def test_exclusive_renices_nothing(tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, name: str) -> None:
    cfg = load_config(_config(tmp_path, sshd, slurm, {"name": name}), {})
    with Store.open(str(tmp_path / "state.db")) as store:
        report = run_enforcement(cfg, store)
    assert report.actions == [] and report.notes == ["slurm_a: exclusive: nothing to renice"]


# --- YARN and HTCondor ---------------------------------------------------------------------------
# No YARN or HTCondor daemon exists here. Their job -> pid data is reproduced exactly as documented:
# the ResourceManager REST bodies (/ws/v1/cluster/apps, /ws/v1/cluster/nodes) from a loopback HTTP
# server, the NodeManager's container pid files
# <yarn.nodemanager.local-dirs>/nmPrivate/<app>/<container>/<container>.pid in a tree in mstest's home,
# and `condor_q -af` / `condor_who -af JobId '#PID'` output printed by stand-in scripts on mstest's PATH.
# The pids in them are REAL processes started here; the renice runs over the real sshd and the nice
# value is read back with ps.

APP = "application_1795400000000_0117"
FINISHED_APP = "application_1795400000000_0101"


def test_discovery_parsers_on_documented_shapes() -> None:
    from metasched.policy.enforce import Proc, family
    from metasched.schedulers.htcondor import parse_condor_q_running, parse_condor_who
    from metasched.schedulers.yarn import parse_container_pids

    root = "/tmp/hadoop-yarn/nm-local-dir/nmPrivate"
    c1 = "container_1795400000000_0117_01_000001"
    c2 = "container_e17_1795400000000_0117_01_000002"
    other = "container_1795400000000_0118_01_000001"  # filed under the wrong application: ignored
    text = (
        f"{root}/{APP}/{c1}/{c1}.pid:4242\n{root}/{APP}/{c2}/{c2}.pid:4250\n"
        f"{root}/{APP}/{other}/{other}.pid:1\n{root}/{APP}/{c1}/launch_container.sh:#!/bin/bash\n"
        f"/tmp/usercache/u/appcache/{APP}/{c1}/{c1}.pid:2\n"
    )
    assert parse_container_pids(text) == {APP: [4242, 4250]}
    q = "123 0 slot1_1@exec1.example.org\n124 3 slot1_2@exec2.example.org\n125 0 undefined\n"
    assert parse_condor_q_running(q) == [("123.0", "exec1.example.org"), ("124.3", "exec2.example.org")]
    assert parse_condor_who("123.0 7776\n124.3 \n") == {"123.0": 7776}
    table = {
        10: Proc(1, 10, 0),
        11: Proc(10, 10, 0),
        12: Proc(11, 12, 0),
        13: Proc(1, 10, 0),
        14: Proc(1, 14, 0),
    }
    assert family(table, 10) == [10, 11, 12, 13]  # the group, and a child that left it
    assert family(table, 12) == [12] and family(table, 99) == []


def _start_job(user: str | None) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A job-like process tree: a session-leading shell (as YARN's launch shell) and its sleep."""
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 600; true"], user=user, start_new_session=True, stdin=subprocess.DEVNULL
    )

    def child() -> bool:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
        return bool(out.stdout.strip())

    wait_for(child, 10, "the job's sleep")
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
    return proc, [proc.pid, *map(int, out.stdout.split())]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _mstest_dir(sshd: SSHServer, name: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=sshd.home))
    shutil.chown(base, sshd.user, sshd.user)
    return base


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _chown_tree(base: Path, owner: str) -> None:
    for p in [base, *base.rglob("*")]:
        shutil.chown(p, owner, owner)


def _nm_tree(base: Path, owner: str, pids: dict[str, int]) -> Path:
    """``nm-local-dir/nmPrivate/<app>/<container>/<container>.pid`` as the NodeManager writes them."""
    local = base / "nm-local-dir"
    for i, (app, pid) in enumerate(pids.items(), 1):
        container = f"container_{app.split('_', 1)[1]}_01_{i:06d}"
        _write(local / "nmPrivate" / app / container / f"{container}.pid", f"{pid}\n")
    (local / "nmPrivate").chmod(0o700)
    _chown_tree(base, owner)
    return local


class _RMBodies(BaseHTTPRequestHandler):
    """The RM's documented JSON: one RUNNING NodeManager, one RUNNING and one FINISHED application (whose
    pid file is still there); applications are filtered by ``states=`` as the RM does, so only the
    enforcer's own ``states=RUNNING`` keeps FINISHED_APP out."""

    bodies: ClassVar[dict[str, Any]] = {
        "/ws/v1/cluster/apps": {
            "apps": {
                "app": [
                    {
                        "id": APP,
                        "user": "mstest",
                        "name": "word count",
                        "queue": "default",
                        "state": "RUNNING",
                        "finalStatus": "UNDEFINED",
                        "startedTime": 1795400100000,
                        "launchTime": 1795400101000,
                        "amHostHttpAddress": "nm1.example.org:8042",
                        "allocatedMB": 2048,
                        "allocatedVCores": 2,
                    },
                    {
                        "id": FINISHED_APP,
                        "user": "mstest",
                        "name": "word count",
                        "queue": "default",
                        "state": "FINISHED",
                        "finalStatus": "SUCCEEDED",
                        "startedTime": 1795400000000,
                        "launchTime": 1795400001000,
                        "finishedTime": 1795400090000,
                        "amHostHttpAddress": "nm1.example.org:8042",
                        "allocatedMB": -1,
                        "allocatedVCores": -1,
                    },
                ]
            }
        },
        "/ws/v1/cluster/nodes": {
            "nodes": {
                "node": [
                    {
                        "id": "nm1.example.org:45454",
                        "nodeHostName": "nm1.example.org",
                        "nodeHTTPAddress": "nm1.example.org:8042",
                        "state": "RUNNING",
                        "numContainers": 2,
                        "usedMemoryMB": 2048,
                        "availMemoryMB": 6144,
                        "usedVirtualCores": 2,
                        "availableVirtualCores": 6,
                        "healthReport": "",
                    }
                ]
            }
        },
    }

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        doc = self.bodies[path]
        wanted = {s.strip().upper() for v in parse_qs(query).get("states", []) for s in v.split(",")}
        if "apps" in doc and wanted:
            kept = [a for a in doc["apps"]["app"] if a["state"] in wanted]
            doc = {"apps": {"app": kept} if kept else None}
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def rm_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RMBodies)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _ssh_dest(sshd: SSHServer, **kw: Any) -> dict[str, Any]:
    return {
        "host": sshd.host,
        "user": sshd.user,
        "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts),
        "port": sshd.port,
        **kw,
    }


def _seed2_like(tmp_path: Path, sshd: SSHServer, other: dict[str, Any], policy: dict[str, Any]) -> Path:
    """Seed 2's example: SGE high priority, the other scheduler on the same nodes, best_effort."""
    data = {
        "database": str(tmp_path / "state.db"),
        "destinations": [
            {"id": "sge", "scheduler": "node", **_ssh_dest(sshd)},
            {"id": "other", **_ssh_dest(sshd), **other},
        ],
        "policies": [{"destinations": ["sge", "other"], "high_priority": "sge", **policy}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yarn_containers_reniced_over_ssh(
    tmp_path: Path,
    sshd: SSHServer,
    rm_url: str,
    env: dict[str, str],
) -> None:
    running, pids = _start_job("mstest")
    finished, old_pids = _start_job("mstest")
    try:
        local = _nm_tree(_mstest_dir(sshd, "nm"), sshd.user, {APP: running.pid, FINISHED_APP: finished.pid})
        yarn = {"scheduler": "yarn", "yarn_url": rm_url, "yarn_local_dirs": [str(local)]}
        config = _seed2_like(tmp_path, sshd, yarn, {"name": "best_effort", "nice": 12})

        res = _cli(["enforce", "--dry-run", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        expected = f"renice -n 12 -p {' '.join(map(str, sorted(pids)))}"
        assert res.stdout == f"{expected}  # on {sshd.host}:{sshd.port}: other job {APP} on nm1.example.org\n"
        assert [nice_of(p) for p in pids] == [0, 0]

        res = _cli(["enforce", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        assert [nice_of(p) for p in pids] == [12, 12]
        assert [nice_of(p) for p in old_pids] == [0, 0]  # its application is no longer RUNNING
    finally:
        _stop(running)
        _stop(finished)


def _condor_stand_ins(base: Path, owner: str, queue: str, who: str) -> Path:
    """``condor_q`` / ``condor_who`` printing documented ``-af`` output and recording their argv."""
    bin_dir = base / "bin"
    for name, out in (("condor_q", queue), ("condor_who", who)):
        _write(base / f"{name}.out", out)
        script = f'#!/bin/sh\nprintf "%s\\n" "$*" >> {base}/{name}.argv\ncat {base}/{name}.out\n'
        _write(bin_dir / name, script, 0o755)
    _chown_tree(base, owner)
    return bin_dir


def test_htcondor_job_reniced_over_ssh(
    tmp_path: Path,
    sshd: SSHServer,
    env: dict[str, str],
) -> None:
    job, pids = _start_job("mstest")
    try:
        base = _mstest_dir(sshd, "condor")
        queue = "123 0 slot1_1@exec1.example.org\n124 0 slot1_2@exec1.example.org\n"
        who = f"123.0 {job.pid}\n124.0 \n"  # 124.0: the starter log names no pid yet
        bin_dir = _condor_stand_ins(base, sshd.user, queue, who)
        condor = {"scheduler": "htcondor", "env": {"PATH": f"{bin_dir}:/usr/bin:/bin"}}
        config = _seed2_like(tmp_path, sshd, condor, {"name": "shared", "weights": {"sge": 60, "other": 40}})

        res = _cli(["enforce", "--json", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        (action,) = report["actions"]
        assert action["job"] == "123.0" and action["node"] == "exec1.example.org" and action["ok"]
        assert action["command"] == f"renice -n 11 -p {' '.join(map(str, sorted(pids)))}"  # (1-0.4)*19
        assert [nice_of(p) for p in pids] == [11, 11]
        assert report["notes"] == [
            "other job 124.0 on exec1.example.org: pids unknown: "
            f"condor_who on {sshd.host}:{sshd.port} names no pid for job 124.0"
        ]
        assert (base / "condor_q.argv").read_text() == (
            "-allusers -constraint JobStatus == 2 -af ClusterId ProcId RemoteHost\n"
        )
        assert (base / "condor_who.argv").read_text() == "-af JobId #PID\n"  # once per host
    finally:
        _stop(job)


def test_plain_status_shows_the_last_enforcement(tmp_path: Path, env: dict[str, str]) -> None:
    """The issue: "Every action is logged and shown in status" — also in the piped table, not only --json."""
    from metasched.policy import record_actions

    data = {
        "database": str(tmp_path / "state.db"),
        "destinations": [
            {"id": "sge", "scheduler": "node", "host": "local"},
            {"id": "hadoop", "scheduler": "yarn", "host": "local"},
            {"id": "slurm_a", "scheduler": "slurm", "host": "local"},
        ],
        "policies": [
            {
                "name": "shared",
                "destinations": ["sge", "hadoop", "slurm_a"],
                "weights": {"sge": 60, "hadoop": 30, "slurm_a": 10},
            }
        ],
    }
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(data))
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    action = {"group": "sge", "policy": "shared", "job": "1", "node": "n1", "host": "local", "dry_run": False}
    with Store.open(str(tmp_path / "state.db")) as store:
        record_actions(
            store,
            [
                {
                    **action,
                    "destination": "hadoop",
                    "at": "2026-01-02T03:04:05Z",
                    "nice": 13,
                    "pids": [5, 6],
                    "command": "renice -n 13 -p 5 6",
                    "ok": True,
                    "error": None,
                },
                {
                    **action,
                    "destination": "hadoop",
                    "at": f"{today}T20:30:00Z",
                    "nice": 13,
                    "pids": [7, 8, 9],
                    "command": "renice -n 13 -p 7 8 9",
                    "ok": True,
                    "error": None,
                },
                {
                    **action,
                    "destination": "slurm_a",
                    "at": f"{today}T20:31:00Z",
                    "nice": 17,
                    "pids": [4],
                    "command": "renice -n 17 -p 4",
                    "ok": False,
                    "error": "local: command failed (exit 1): renice -n 17 -p 4: Operation not permitted",
                },
            ],
        )
    res = _cli(["status", "-c", str(config)], env)
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line for line in res.stdout.splitlines()[1:]}
    assert rows["hadoop"].endswith("policy shared (sge); reniced 3 procs to 13 at 20:30 UTC")
    assert rows["slurm_a"].endswith(
        "policy shared (sge); renice to 17 FAILED at 20:31 UTC: Operation not permitted"
    )
    assert rows["sge"].endswith("policy shared (sge)")
    res = _cli(["status", "hadoop", "-c", str(config)], env)
    assert res.returncode == 0, res.stderr
    assert "reniced 3 procs to 13 at 20:30 UTC" in res.stdout.split("\n\n")[0]


@pytest.fixture
def sudo_renice(sshd: SSHServer) -> Iterator[Path]:
    """Real sudo (Debian's ``sudo`` package): a drop-in letting the ssh user run only /usr/bin/renice as
    root without a password, checked with visudo and removed afterwards."""
    if shutil.which("sudo") is None or shutil.which("visudo") is None:
        pytest.fail("the sudo package is not installed (.ci/run installs it)")
    drop_in = Path(f"/etc/sudoers.d/metasched-test-{os.getpid()}")  # no '.' or '~': sudo would skip it
    staged = Path(tempfile.mkdtemp()) / "sudoers"
    staged.write_text(f"{sshd.user} ALL=(root) NOPASSWD: /usr/bin/renice\n")
    subprocess.run(["visudo", "-c", "-q", "-f", str(staged)], check=True)
    staged.chmod(0o440)
    shutil.move(staged, drop_in)
    try:
        yield drop_in
    finally:
        drop_in.unlink(missing_ok=True)
        shutil.rmtree(staged.parent, ignore_errors=True)


def test_sudo_renices_a_root_process_over_ssh(
    tmp_path: Path,
    sshd: SSHServer,
    rm_url: str,
    sudo_renice: Path,
    env: dict[str, str],
) -> None:
    """``sudo: true``: ``sudo -n renice`` over the real sshd reaches a ROOT-owned container process the
    ssh user cannot renice itself, raises its nice and then lowers it again (only root may lower)."""
    job, pids = _start_job(None)  # root's
    try:
        assert {
            subprocess.run(["ps", "-o", "user=", "-p", str(p)], capture_output=True, text=True).stdout.strip()
            for p in pids
        } == {"root"}
        local = _nm_tree(_mstest_dir(sshd, "nm"), sshd.user, {APP: job.pid})
        yarn = {"scheduler": "yarn", "yarn_url": rm_url, "yarn_local_dirs": [str(local)]}
        config = _seed2_like(tmp_path, sshd, yarn, {"name": "best_effort", "nice": 15, "sudo": True})
        expected = f"sudo -n renice -n 15 -p {' '.join(map(str, sorted(pids)))}"

        res = _cli(["enforce", "--dry-run", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"{expected}  # on {sshd.host}:{sshd.port}: other job {APP}")
        assert [nice_of(p) for p in pids] == [0, 0]

        res = _cli(["enforce", "--json", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        (action,) = json.loads(res.stdout)["actions"]
        assert action["ok"] and action["command"] == expected, action
        assert [nice_of(p) for p in pids] == [15, 15]

        config = _seed2_like(tmp_path, sshd, yarn, {"name": "best_effort", "nice": 5, "sudo": True})
        res = _cli(["enforce", "-c", str(config)], env)
        assert res.returncode == 0, res.stderr
        assert [nice_of(p) for p in pids] == [5, 5]

        # the same without sudo: refused by the kernel, recorded as a failure, exit 3
        config = _seed2_like(tmp_path, sshd, yarn, {"name": "best_effort", "nice": 9})
        res = _cli(["enforce", "--json", "-c", str(config)], env)
        assert res.returncode == 3
        (action,) = json.loads(res.stdout)["actions"]
        assert not action["ok"] and "Operation not permitted" in action["error"]
        assert [nice_of(p) for p in pids] == [5, 5]
    finally:
        _stop(job)


# --- the port: enforcement knows no scheduler names ------------------------------------------------


@dataclass(frozen=True)
class _StandIn:
    """An adapter of a scheduler enforcement has never heard of: one running job led by ``leader``."""

    leader: int

    def collect(self, runner: Runner) -> Snapshot:
        raise AssertionError("enforcement never collects")

    def running_jobs(self, head: HostRunner, nodes: NodeRunners) -> _StandInJobs:
        return _StandInJobs(self.leader)


@dataclass(frozen=True)
class _StandInJobs:
    leader: int
    notes: tuple[str, ...] = ("other on n9: listing skipped",)

    @property
    def jobs(self) -> list[tuple[str, str]]:
        return [("job-1", "n1")]

    def pids(self, runner: HostRunner, job: str, node: str) -> JobPids:
        assert (runner.label, job, node) == ("local", "job-1", "n1")
        return JobPids((self.leader,), leaders=True)


def test_enforce_asks_any_adapter_with_the_capability(tmp_path: Path) -> None:
    """Whatever the scheduler is called, an adapter implementing JobProcesses is asked for its jobs'
    pids and the leader's whole family is reniced; one without the capability is a note."""
    leader = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
    try:
        data = {
            "database": str(tmp_path / "state.db"),
            "destinations": [
                {"id": "other", "scheduler": "node", "host": "local"},
                {"id": "plain", "scheduler": "node", "host": "local"},
                {"id": "hp", "scheduler": "node", "host": "local"},
            ],
            "policies": [
                {
                    "name": "best_effort",
                    "destinations": ["other", "plain", "hp"],
                    "high_priority": "hp",
                    "nice": 6,
                }
            ],
        }
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump(data))
        cfg = load_config(path, {})
        wiring = Wiring(
            adapter_for=lambda d: _StandIn(leader.pid) if d.id == "other" else make_adapter(d),
            connect=open_transport,
        )
        wait_for(lambda: len(family(parse_ps(_ps()), leader.pid)) >= 2, 10, "the stand-in job's sleep")
        with Store.open(str(tmp_path / "state.db")) as store:
            report = enforce(cfg, store, wiring)
        (action,) = report.actions
        assert action.ok and action.job == "job-1" and action.host == "local" and action.nice == 6
        assert leader.pid in action.pids and len(action.pids) >= 2
        assert all(nice_of(p) == 6 for p in action.pids)
        assert report.notes == [
            "other on n9: listing skipped",
            "plain: enforcement not supported for node (job pids unknown)",
        ]
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def _ps() -> str:
    return subprocess.run(PS_ARGV, capture_output=True, text=True, check=True).stdout


SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
DROP_IN = SYSTEMD / "enforce-local.conf.example"


def _exposed(unit_dir: Path, name: str) -> set[str]:
    """The checks ``systemd-analyze security --offline`` marks ✗ for the unit and its drop-ins."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_dir / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
        check=False,
    )
    assert "Overall exposure level" in proc.stdout, proc.stderr
    return {line[2:].split()[0] for line in proc.stdout.splitlines() if line.startswith("✗ ")}


@pytest.mark.parametrize("name", ["metasched-collect.service", "metasched-serve.service"])
def test_local_enforcement_drop_in_relaxes_exactly_renice(tmp_path: Path, name: str) -> None:
    """systemd/enforce-local.conf.example, installed as a drop-in, verifies cleanly and opens exactly
    what renice on this machine needs: CAP_SYS_NICE (bounding + ambient), setpriority from @resources,
    and a visible process tree. NoNewPrivileges, @privileged and every other capability stay closed."""
    exe = shutil.which("metasched")
    assert exe is not None
    text = (SYSTEMD / name).read_text().replace("/opt/metasched/bin/metasched", exe)
    plain, dropped = tmp_path / "plain", tmp_path / "dropped"
    for d in (plain, dropped):
        d.mkdir()
        (d / name).write_text(text)
    (dropped / f"{name}.d").mkdir()
    shutil.copy(DROP_IN, dropped / f"{name}.d" / "enforce-local.conf")

    proc = subprocess.run(
        ["systemd-analyze", "verify", str(dropped / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{dropped}:"},
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr

    opened = _exposed(dropped, name) - _exposed(plain, name)
    assert opened == {
        "AmbientCapabilities=",
        "CapabilityBoundingSet=~CAP_SYS_(NICE|RESOURCE)",
        "SystemCallFilter=~@resources",
        "ProtectProc=",
    }
