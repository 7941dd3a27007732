"""Enforcement against real job processes: a real Slurm job of the ssh user ``mstest`` reniced over the
real sshd (its nice value read back with ``ps``), ``--dry-run`` printing without acting, the collect
hook of ``enforce: true``, and real SGE jobs found through the execd spool (run locally as root).

Parsers of ``scontrol listpids`` / ``ps`` / ``qconf -sconf`` are checked on output captured from the
real daemons here (Slurm 22.05, SGE 8.1.9, procps).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.config import load_config
from metasched.policy import recent_actions
from metasched.policy.enforce import enforce, parse_listpids, parse_ps, spool_dir
from metasched.store import Store
from tests.infra.procs import wait_for
from tests.infra.sge import SGECluster
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHServer
from tests.test_policy_ranking import _cli, env  # noqa: F401  (env is a fixture)

LISTPIDS = """\
PID      JOBID    STEPID   LOCALID GLOBALID
8625     1        batch    0       0
8626     1        batch    -       -
 """


def test_parsers_on_real_output() -> None:
    assert parse_listpids(LISTPIDS) == [8625, 8626]
    assert parse_ps("    1     1   0\n 8625  8625  10\n   17     0   -\n") == {1: (1, 0), 8625: (8625, 10)}
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
    env: dict[str, str],  # noqa: F811
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
            again = enforce(cfg, store)
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
            report = enforce(load_config(config, {}), store)
        (mine,) = [a for a in report.actions if a.job == job]
        assert mine.ok and mine.host == f"{sshd.host}:{sshd.port}", mine
        assert [nice_of(p) for p in pids] == [15] * len(pids)
    finally:
        slurm.scancel(job)


def test_enforce_off_by_default_in_collect(
    tmp_path: Path,
    sshd: SSHServer,
    slurm: SlurmCluster,
    env: dict[str, str],  # noqa: F811
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
        report = enforce(cfg, store)
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
        report = enforce(cfg, store)
    assert report.actions == [] and report.notes == ["slurm_a: exclusive: nothing to renice"]
