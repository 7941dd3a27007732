"""The paths production takes, end to end with real components (issue 12, "Production paths").

- `metasched collect` and serve's collect loop on a real PostgreSQL 15 store, from the real Slurm test
  cluster over real sshd, with the collect lock in ``$RUNTIME_DIRECTORY`` as the systemd units set it.
- `metasched rank` run as Galaxy's OS user against the WAL SQLite store the service user's collect
  wrote (the "Timer only" set-up of docs/serve.md): two system users created for the test.
- The README's first set-up command with no config under a private, empty ``HOME``.
- collect's fan-out shown by the session intervals the "remote" side logs (a ``uname`` stub on the
  sshd side that sleeps and records its start and end), not by wall time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from metasched.app.lock import CollectLock, lock_path
from metasched.store import Store
from tests.infra.postgres import create_database, drop_database
from tests.infra.procs import free_port, wait_for
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SSHDFactory, SSHServer

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
FANOUT_SERVERS = 4
STUB_SLEEP_S = 1.0

# A scheduler command stand-in on the "remote" side: logs when its session's command starts and ends
# (the clock is this machine's: the sshd servers are on loopback), then runs the real command.
_STUB = """#!/bin/sh
printf 'start %s\\n' "$(date +%s.%N)" >> "$STUB_LOG"
sleep "$STUB_SLEEP"
printf 'end %s\\n' "$(date +%s.%N)" >> "$STUB_LOG"
exec {real} "$@"
"""


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without anything that would pick a config, store or InfluxDB."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METASCHED_", "INFLUXDB_", "XDG_"))
        and k
        not in ("CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY")
    }
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), **extra}


def metasched(*args: str) -> list[str]:
    return [sys.executable, "-m", "metasched", *args]


def run(argv: Sequence[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=120, check=False, **kw)


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def ssh_entry(server: SSHServer, dest_id: str, scheduler: str, env: dict[str, str]) -> dict[str, Any]:
    """A destination as an operator writes it for this sshd (login user, key, verified host key)."""
    return {
        "id": dest_id,
        "scheduler": scheduler,
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "key_file": str(server.key_file),
        "known_hosts": str(server.known_hosts),
        "connect_timeout": 10,
        "command_timeout": 30,
        "env": env,
    }


def shared_dir(prefix: str, mode: int = 0o755) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(mode)
    return d


@pytest.fixture(scope="module")
def stubs() -> Iterator[Path]:
    """World-readable ``squeue`` and ``uname`` stand-ins (mstest runs them) that log and sleep."""
    d = shared_dir("metasched-stubs-")
    for name in ("squeue", "uname"):
        real = shutil.which(name, path=BASE_PATH)
        assert real is not None, f"{name} not installed"
        script = d / name
        script.write_text(_STUB.format(real=real))
        script.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def logs() -> Iterator[Path]:
    """A directory the remote user may write its stub logs into."""
    d = shared_dir("metasched-stublogs-", 0o777)
    d.chmod(0o777)  # mkdtemp's mode is filtered by the umask
    yield d
    shutil.rmtree(d, ignore_errors=True)


def intervals(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every stub run recorded in ``log``, in order."""
    stamps = [line.split() for line in log.read_text().splitlines() if line.strip()]
    starts = [float(t) for kind, t in stamps if kind == "start"]
    ends = [float(t) for kind, t in stamps if kind == "end"]
    assert len(starts) == len(ends), stamps
    return list(zip(starts, ends, strict=True))


# --- collect and serve on PostgreSQL ---------------------------------------------------------


@pytest.fixture
def pg_url(postgres: str) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server."""
    name = f"prod_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres, name)
    try:
        yield url
    finally:
        drop_database(postgres, name)


def test_two_collects_at_once_on_postgresql_one_runs_the_other_skips(
    tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, stubs: Path, logs: Path, pg_url: str
) -> None:
    """The first collect holds the lock while its squeue sleeps on the head node; a second one started
    then waits collect.lock_timeout and exits 0 with the documented message, touching nothing."""
    squeue_log = logs / "squeue.log"
    remote_env = {**slurm.env, "PATH": f"{stubs}:{BASE_PATH}", "STUB_LOG": str(squeue_log), "STUB_SLEEP": "4"}
    config = write_yaml(
        tmp_path / "config.yml",
        {
            "database": pg_url,
            "collect": {"lock_timeout": 0.5},
            "destinations": [ssh_entry(sshd, "slurm_pg", "slurm", remote_env)],
        },
    )
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = clean_env(tmp_path / "home", RUNTIME_DIRECTORY=str(runtime))
    first = subprocess.Popen(
        metasched("collect", "-c", str(config)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "start" in squeue_log.read_text(), 60, "the first collect to run squeue")
        second = run(metasched("collect", "-c", str(config)), env)
        assert first.poll() is None, "the first collect ended before the second was refused"
    finally:
        out, err = first.communicate(timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout == ""
    assert "collect already running" in second.stderr
    assert str(runtime / "metasched-collect-") in second.stderr  # the lock of a PostgreSQL store
    assert first.returncode == 0, err
    assert out.startswith("slurm_pg ok "), out
    assert len(intervals(squeue_log)) == 1  # only the first collect reached the head node

    with Store.open(pg_url) as store:
        assert len({r.run_id for r in store.runs()}) == 1
        stored_jobs = store.jobs("slurm_pg")
        stored_nodes = {n.name for n in store.nodes("slurm_pg")}
    assert stored_jobs and stored_nodes >= {"n1", "n2", "n3"}

    shown = run(metasched("status", "--json", "--database", pg_url, "-c", str(config)), env)
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)
    assert row["id"] == "slurm_pg" and row["reachable"] and row["last_success"] is not None
    assert row["nodes_unavailable"] >= 1  # n3 is down
    assert row["jobs_running"] + row["jobs_queued"] + row["jobs_held"] == len(stored_jobs)


def cycles(metrics: str, result: str) -> float:
    found = re.search(rf'^metasched_collect_cycles_total\{{result="{result}"\}} ([\d.e+]+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_serve_collect_loop_on_postgresql(
    tmp_path: Path, sshd: SSHServer, slurm: SlurmCluster, pg_url: str
) -> None:
    """serve with a PostgreSQL store and a short interval: cycles land in the store and /v1/status shows
    them; while another process holds the store's collect lock its cycles are skipped, then resume."""
    config = write_yaml(
        tmp_path / "config.yml",
        {
            "collect": {"interval": 0.5, "jitter": 0, "lock_timeout": 0.2},
            "destinations": [ssh_entry(sshd, "slurm_pg", "slurm", dict(slurm.env))],
        },
    )
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = clean_env(tmp_path / "home", RUNTIME_DIRECTORY=str(runtime))
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            metasched("serve", "-c", str(config), "--database", pg_url, "--port", str(port)),
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            def runs() -> set[str]:
                with Store.open(pg_url) as store:
                    return {r.run_id for r in store.runs(limit=1000)}

            def status() -> dict[str, Any]:
                (row,) = http.get("/v1/status").json()
                return dict(row)

            wait_for(lambda: len(runs()) >= 3, 60, "three collect cycles in PostgreSQL")
            row = status()
            assert row["id"] == "slurm_pg" and row["reachable"] and row["last_success"] is not None
            assert http.get("/healthz").json() == {"status": "ok"}
            with Store.open(pg_url) as store:
                jobs = store.jobs("slurm_pg")
                nodes = {n.name for n in store.nodes("slurm_pg")}
            assert jobs and nodes >= {"n1", "n2", "n3"}
            assert row["jobs_running"] + row["jobs_queued"] + row["jobs_held"] == len(jobs)

            held = CollectLock(lock_path(pg_url, env), 5)
            held.acquire()
            try:
                wait_for(lambda: cycles(http.get("/metrics").text, "skipped") >= 2, 30, "skipped cycles")
                during = runs()
                ok_before = cycles(http.get("/metrics").text, "ok")
            finally:
                held.release()
            wait_for(lambda: cycles(http.get("/metrics").text, "ok") > ok_before, 30, "cycles to resume")
            assert runs() > during
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
    assert code == 0, log.read_text(errors="replace")


# --- rank as Galaxy's user against the WAL store ----------------------------------------------


def _world_reachable(path: Path) -> bool:
    """Other users can reach ``path``: every directory above it searchable, the file itself readable."""
    path = path.resolve()
    if not path.stat().st_mode & 0o004:
        return False
    return all(p.stat().st_mode & 0o001 for p in path.parents)


def _interpreter_for_other_users() -> str | None:
    """A Python of this minor version that another user may execute (a venv's own interpreter may live
    in root's private home), or None."""
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (
        os.path.realpath(sys.executable),
        *(f"{d}/python{wanted}" for d in BASE_PATH.split(":")),
    ):
        path = Path(candidate)
        if path.is_file() and _world_reachable(path) and path.stat().st_mode & 0o001:
            probe = run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], os.environ.copy()
            )
            if probe.stdout.strip() == wanted:
                return candidate
    return None


def _retry(argv: list[str]) -> None:
    """useradd/userdel fail on the /etc/passwd lock while another test session holds it."""
    error = ""
    for _ in range(40):
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return
        error = res.stderr.strip()
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(argv)}: {error}")


@dataclass
class Account:
    name: str
    uid: int
    gid: int  # the user's own primary group


@dataclass
class Users:
    """The service user that collects (``metasched`` in the units) and Galaxy's user in its group."""

    service: Account
    galaxy: Account
    launcher: Path  # the venv's entry point, runnable by both
    interpreter: str

    def as_service(
        self, argv: Sequence[str], env: dict[str, str], umask: int
    ) -> subprocess.CompletedProcess[str]:
        """As the units run it: User= and Group= the service account, UMask= ``umask``."""
        return run(
            argv, env, user=self.service.uid, group=self.service.gid, extra_groups=[], umask=umask, cwd="/"
        )

    def galaxy_kw(self) -> dict[str, Any]:
        """Galaxy's user: its own primary group, member of the service group, a usual 022 umask."""
        return {
            "user": self.galaxy.uid,
            "group": self.galaxy.gid,
            "extra_groups": [self.service.gid],
            "umask": 0o022,
            "cwd": "/",
        }

    def as_galaxy(
        self, argv: Sequence[str], env: dict[str, str], stdin: str
    ) -> subprocess.CompletedProcess[str]:
        return run(argv, env, input=stdin, **self.galaxy_kw())


def _account(name: str) -> Account:
    entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def users() -> Iterator[Users]:
    """Two system users made for this test (removed after it), and a launcher both may run."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a service user and a Galaxy user (useradd --system)")
    interpreter = _interpreter_for_other_users()
    site_dir = Path(sysconfig.get_paths()["purelib"])
    if interpreter is None or not _world_reachable(site_dir):
        pytest.skip("no Python of this version, with this venv's packages, that another user may run")
    tag = uuid.uuid4().hex[:8]
    service, galaxy = f"mssvc{tag}", f"msgal{tag}"
    bin_dir = shared_dir("metasched-launcher-")
    launcher = bin_dir / "metasched"
    launcher.write_text(
        f"#!{interpreter}\n"
        "import site\nimport sys\n"
        f"site.addsitedir({str(site_dir)!r})\n"
        "from metasched.cli import main\n"
        "sys.exit(main())\n"
    )
    launcher.chmod(0o755)
    created: list[str] = []
    try:
        nologin = "/usr/sbin/nologin"
        _retry(["useradd", "--system", "--user-group", "--no-create-home", "--shell", nologin, service])
        created.append(service)
        _retry(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                nologin,
                "-G",
                service,
                galaxy,
            ]
        )
        created.append(galaxy)
        yield Users(_account(service), _account(galaxy), launcher, interpreter)
    finally:
        for name in reversed(created):
            with contextlib.suppress(RuntimeError):
                _retry(["userdel", name])
        shutil.rmtree(bin_dir, ignore_errors=True)


REQUEST = {
    "job": {"tool_id": "toolshed.g2.bx.psu.edu/repos/iuc/fastp/fastp/0.23.4", "job_id": "4242", "cores": 1},
    "destinations": [{"id": "localhost"}, {"id": "nowhere"}],
}


def state_dir(users: Users, mode: int) -> tuple[Path, Path]:
    """(base, state): ``state`` as systemd's StateDirectory= makes it for User=/Group= the service user."""
    base = shared_dir("metasched-state-")
    state = base / "metasched"
    state.mkdir()
    os.chown(state, users.service.uid, users.service.gid)
    state.chmod(mode)
    return base, state


def service_env(state: Path) -> dict[str, str]:
    """The unit's environment: no config file (the built-in localhost), $STATE_DIRECTORY."""
    return {"PATH": BASE_PATH, "LANG": "C.UTF-8", "STATE_DIRECTORY": str(state)}


def galaxy_env(db: Path) -> dict[str, str]:
    return {"PATH": BASE_PATH, "LANG": "C.UTF-8", "METASCHED_DATABASE": str(db)}


def rank_as_galaxy(users: Users, db: Path) -> dict[str, Any]:
    res = users.as_galaxy([str(users.launcher), "rank"], galaxy_env(db), json.dumps(REQUEST))
    assert res.returncode == 0, res.stderr
    answer: dict[str, Any] = json.loads(res.stdout)
    return answer


@contextlib.contextmanager
def galaxy_reader(users: Users, db: Path) -> Iterator[None]:
    """Galaxy's user holding the store open (a rank in flight): its connection makes the -wal and -shm
    files if nobody else has them open."""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(db)!r})\n"
        "c.execute('SELECT count(*) FROM destination').fetchone()\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [users.interpreter, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": BASE_PATH},
        **users.galaxy_kw(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def test_rank_as_galaxys_user_answers_from_the_wal_store_and_records_the_placement(users: Users) -> None:
    """docs/serve.md's "Timer only" set-up, exactly: Galaxy's user in the service group, both units with
    UMask=0007 and StateDirectoryMode=2770. The database comes out 0660, Galaxy's user ranks from the
    stored state and records its placement, and a collect works even while Galaxy's user holds the
    store open (the setgid bit gives the -wal/-shm files it creates the service group)."""
    base, state = state_dir(users, 0o2770)
    try:
        db = state / "metasched.db"
        first = users.as_service([str(users.launcher), "collect"], service_env(state), umask=0o007)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("localhost ok "), first.stdout
        assert db.stat().st_uid == users.service.uid
        assert db.stat().st_mode & 0o777 == 0o660  # 0666 minus the unit's umask

        answer = rank_as_galaxy(users, db)
        assert answer["warnings"] == []
        reasons = {r["id"]: r["reasons"][0] for r in answer["ranked"]}
        assert reasons["localhost"].startswith("collected "), reasons  # from the stored state
        assert reasons["nowhere"] == "no collected state"
        with Store.open(str(db), readonly=True) as store:
            placed = store.inflight_placements(["localhost", "nowhere"], datetime(2000, 1, 1, tzinfo=UTC))
        assert [(p.job_id, p.destination) for p in placed] == [("4242", answer["sorted_destinations"][0])]

        with galaxy_reader(users, db):
            made = {p.name for p in state.iterdir() if p.stat().st_uid == users.galaxy.uid}
            assert made == {"metasched.db-wal", "metasched.db-shm"}, made  # what the collect must open
            again = users.as_service([str(users.launcher), "collect"], service_env(state), umask=0o007)
            assert again.returncode == 0, again.stderr
            assert {p.stat().st_gid for p in state.iterdir()} == {users.service.gid}
        assert rank_as_galaxy(users, db)["warnings"] == []
        last = users.as_service([str(users.launcher), "collect"], service_env(state), umask=0o007)
        assert last.returncode == 0, last.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- README set-up command 1 ------------------------------------------------------------------


def test_readme_first_command_with_no_config_under_a_private_home(tmp_path: Path) -> None:
    """`metasched collect && metasched status` from the installed venv, HOME empty, no XDG_*: the store
    appears under ~/.local/state/metasched/ and status lists `localhost`."""
    exe = Path(sys.prefix) / "bin" / "metasched"
    if not exe.is_file():
        pytest.skip(f"no installed entry point at {exe}")
    if Path("/etc/metasched/config.yml").exists():
        pytest.skip("/etc/metasched/config.yml exists on this machine: the command would use it")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": BASE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    res = run(["sh", "-c", f"'{exe}' collect && '{exe}' status"], env, cwd=home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("localhost ok "), res.stdout
    assert any(line.split()[:1] == ["localhost"] for line in lines[2:]), res.stdout  # status's row
    state = home / ".local" / "state" / "metasched"
    assert (state / "metasched.db").is_file()
    made = {p.relative_to(home).parts[0] for p in home.rglob("*")}
    assert made == {".local"}, made  # nothing else in HOME


# --- fan-out concurrency from the remote side's session times --------------------------------


@pytest.fixture(scope="module")
def fanout_servers(sshd_factory: SSHDFactory) -> list[SSHServer]:
    """Independent sshd servers: one connection each, so one collect worker each."""
    return sshd_factory.many(FANOUT_SERVERS)


def max_overlap(spans: Sequence[tuple[float, float]]) -> int:
    """The most spans open at one moment (an end at the same instant as a start does not overlap)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("fanout", [1, 2, FANOUT_SERVERS])
def test_fanout_runs_that_many_ssh_sessions_at_once(
    tmp_path: Path, fanout_servers: list[SSHServer], stubs: Path, logs: Path, fanout: int
) -> None:
    """Each destination's `uname` sleeps on the sshd side and logs its span: with collect.fanout N at
    most N spans overlap and N do (1: strictly one after the other)."""
    dests = [
        ssh_entry(
            server,
            f"node{i}",
            "node",
            {
                "PATH": f"{stubs}:{BASE_PATH}",
                "STUB_LOG": str(logs / f"node{i}.log"),
                "STUB_SLEEP": str(STUB_SLEEP_S),
            },
        )
        for i, server in enumerate(fanout_servers)
    ]
    config = write_yaml(
        tmp_path / "config.yml",
        {"database": str(tmp_path / "state.db"), "collect": {"fanout": fanout}, "destinations": dests},
    )
    res = run(metasched("collect", "-c", str(config)), clean_env(tmp_path / "home"))
    assert res.returncode == 0, res.stdout + res.stderr
    spans = [span for i in range(FANOUT_SERVERS) for span in intervals(logs / f"node{i}.log")]
    assert len(spans) == FANOUT_SERVERS
    assert max_overlap(spans) == fanout, sorted(spans)
