"""Real OpenSSH servers on loopback for the transport/collect tests and the fan-out benchmark.

Each server is a ``/usr/sbin/sshd -D`` of its own (own port, host key, authorized_keys and
known_hosts) that lets the non-root user ``mstest`` log in with one shared ed25519 client key.
The plain functions (``ensure_user``, ``make_key``, ``start_sshd``) are importable without pytest
so ``bench/bench_fanout.py`` starts servers the same way the fixtures do.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metasched.settings import DestinationConfig, SchedulerName, SSHSettings
from tests.infra.procs import free_port, stop, wait_for

SSHD = "/usr/sbin/sshd"
TEST_USER = "mstest"
_SSH_FIELDS = {f.name for f in msgspec.structs.fields(SSHSettings)}


def ensure_user(name: str = TEST_USER) -> Path:
    """Create the login user once (idempotent, tolerant of a concurrent creator); return its home.

    Several test sessions may start at once: useradd/usermod then fail on the /etc/passwd lock or
    "already exists", so both are retried until the account is in the wanted state.
    """
    error = ""
    for _ in range(20):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], capture_output=True, text=True)
        # A locked account ("!" password) is refused by sshd with UsePAM no; "*": no password, not locked.
        res = subprocess.run(["usermod", "-p", "*", name], capture_output=True, text=True)
        if res.returncode == 0:
            return Path(pwd.getpwnam(name).pw_dir)
        error = res.stderr.strip()
        time.sleep(0.1)
    raise RuntimeError(f"cannot prepare user {name}: {error}")


def make_key(path: Path) -> Path:
    """An ed25519 key pair without passphrase at ``path`` (+ ``.pub``)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "metasched-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@dataclass
class SSHServer:
    """One running sshd and everything a DestinationConfig needs to reach it."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    home: Path
    dir: Path  # holds sshd_config, host key, authorized_keys, log
    host_key_pub: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def ssh_settings(self, **overrides: Any) -> SSHSettings:
        """Settings that log in as the test user with verified host keys; override any field."""
        base = SSHSettings(
            user=self.user,
            key_file=str(self.key_file),
            known_hosts=str(self.known_hosts),
            port=self.port,
            connect_timeout=5.0,
            command_timeout=15.0,
        )
        return msgspec.structs.replace(base, **overrides)

    def destination(
        self, id: str, scheduler: SchedulerName, env: dict[str, str] | None = None, **kw: Any
    ) -> DestinationConfig:
        """A destination on this server. ``kw`` naming SSHSettings fields (command_timeout, key_file,
        host_key_policy, ...) go into ``ssh``; the rest are DestinationConfig fields."""
        ssh_kw = {k: v for k, v in kw.items() if k in _SSH_FIELDS}
        dest_kw = {k: v for k, v in kw.items() if k not in _SSH_FIELDS}
        ssh = dest_kw.pop("ssh", None) or self.ssh_settings(**ssh_kw)
        return DestinationConfig(
            id=id, scheduler=scheduler, host=self.host, ssh=ssh, env=dict(env or {}), **dest_kw
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def start_sshd(base: Path, key_file: Path, user: str = TEST_USER, home: Path | None = None) -> SSHServer:
    """Start one sshd in a fresh directory under ``base`` accepting ``key_file`` for ``user``.

    The directory is world-traversable because sshd reads authorized_keys with the user's rights.
    """
    d = Path(tempfile.mkdtemp(prefix="sshd-", dir=base))
    d.chmod(0o755)
    port = free_port()
    host_key = make_key(d / "host_ed25519")
    auth = d / "authorized_keys"
    auth.write_text(Path(f"{key_file}.pub").read_text())
    auth.chmod(0o644)
    host_pub = Path(f"{host_key}.pub")
    key_type, key_b64 = host_pub.read_text().split()[:2]
    known_hosts = d / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    cfg = d / "sshd_config"
    cfg.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {auth}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxStartups 100:30:200\n"
        "LogLevel INFO\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege-separation dir
    server = SSHServer(
        host="127.0.0.1",
        port=port,
        user=user,
        key_file=key_file,
        known_hosts=known_hosts,
        home=home or Path(pwd.getpwnam(user).pw_dir),
        dir=d,
        host_key_pub=host_pub,
    )
    with server.log.open("ab") as log:  # the child keeps its own copy of the descriptor
        server.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = server.proc

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {server.log.read_text()}")
        return f"Server listening on 127.0.0.1 port {port}" in server.log.read_text()

    try:
        wait_for(ready, timeout=10, what=f"sshd on port {port}")
    except Exception:
        server.stop()
        raise RuntimeError(f"sshd did not start: {server.log.read_text()}") from None
    return server


class SSHDFactory:
    """Starts extra independent sshd servers sharing one client key; stops them all at the end."""

    def __init__(self, base: Path, key_file: Path, user: str = TEST_USER) -> None:
        self.base = base
        self.key_file = key_file
        self.user = user
        self.home = ensure_user(user)
        self.servers: list[SSHServer] = []

    def __call__(self) -> SSHServer:
        server = start_sshd(self.base, self.key_file, self.user, self.home)
        self.servers.append(server)
        return server

    def many(self, n: int) -> list[SSHServer]:
        return [self() for _ in range(n)]

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()


def make_base_dir() -> tuple[Path, Path]:
    """A world-traversable temp dir with the shared client key in it: (dir, key_file)."""
    base = Path(tempfile.mkdtemp(prefix="metasched-sshd-"))
    base.chmod(0o755)
    return base, make_key(base / "client_ed25519")


@pytest.fixture(scope="session")
def sshd_factory() -> Iterator[SSHDFactory]:
    base, key = make_base_dir()
    factory = SSHDFactory(base, key)
    try:
        yield factory
    finally:
        factory.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(sshd_factory: SSHDFactory) -> SSHServer:
    """The shared sshd on 127.0.0.1 (user mstest); stopped with the factory at session end."""
    return sshd_factory()
