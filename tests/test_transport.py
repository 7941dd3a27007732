"""Transports against a real OpenSSH sshd on loopback (user mstest) and the local machine."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from msgspec.structs import replace

from metasched.domain.errors import TransportError
from metasched.schedulers.slurm import squeue_command
from metasched.settings import DestinationConfig, SSHSettings
from metasched.transport import open_transport
from metasched.transport.base import command_name
from metasched.transport.local import LocalTransport
from metasched.transport.ssh import SSHTransport
from tests.infra.procs import free_port, wait_for
from tests.infra.sshd import SSHServer, make_key


def local_dest() -> DestinationConfig:
    return DestinationConfig(id="loc", scheduler="node", host="local", ssh=SSHSettings())


def accepted_logins(server: SSHServer) -> int:
    return server.log.read_text().count("Accepted publickey")


def test_runs_as_test_user_over_one_connection(sshd: SSHServer) -> None:
    before = accepted_logins(sshd)
    with open_transport(sshd.destination("d", "node")) as t:
        assert isinstance(t, SSHTransport)
        assert t.run(["id", "-un"]).strip() == sshd.user
        assert t.run(["pwd"]).strip() == str(sshd.home)
        assert t.run(["echo", "three"]) == "three\n"
    assert accepted_logins(sshd) == before + 1


@pytest.fixture(params=["ssh", "local"])
def dest(request: pytest.FixtureRequest, sshd: SSHServer) -> DestinationConfig:
    if request.param == "ssh":
        return sshd.destination("d", "node", env={"FROM_CONFIG": "cfg value"})
    return DestinationConfig(
        id="d", scheduler="node", host="local", ssh=SSHSettings(), env={"FROM_CONFIG": "cfg value"}
    )


@pytest.fixture
def pwned() -> Iterator[Path]:
    path = Path(f"/tmp/metasched-pwned-{uuid.uuid4().hex}")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory the ssh test user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="metasched-transport-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_env_passing(dest: DestinationConfig) -> None:
    with open_transport(dest) as t:
        assert t.run(["printenv", "FROM_CONFIG"]) == "cfg value\n"
        assert t.run(["printenv", "EXTRA"], env={"EXTRA": "x y  z"}) == "x y  z\n"
        # per-call env wins over the destination's
        assert t.run(["printenv", "FROM_CONFIG"], env={"FROM_CONFIG": "call"}) == "call\n"


def test_no_shell_injection(dest: DestinationConfig, pwned: Path) -> None:
    evil = {"A": f"x; touch {pwned}", "B": "$(id)", "C": "`id`", "D": "'\"&|<>*\n"}
    with open_transport(dest) as t:
        for name, value in evil.items():
            assert t.run(["printenv", name], env=evil) == value + "\n"
        assert t.run(["echo", f"$(touch {pwned})", "*", "~"]) == f"$(touch {pwned}) * ~\n"
    assert not pwned.exists()


def test_nonzero_exit_names_host_and_stderr_tail(dest: DestinationConfig) -> None:
    with open_transport(dest) as t, pytest.raises(TransportError) as err:
        t.run(["sh", "-c", "echo lots of noise >&2; echo the real problem >&2; exit 4"])
    msg = str(err.value)
    label = "local" if dest.is_local else f"127.0.0.1:{dest.ssh.port}"
    assert msg.startswith(f"sh failed (exit 4) on {label}: ") and msg.endswith("the real problem")
    assert "\n" not in msg and "echo" not in msg  # the program, not its arguments


def test_failure_names_the_program_not_the_env_prefix(dest: DestinationConfig, readable_dir: Path) -> None:
    """Slurm's commands start with ~700 characters of ``env -u ...``; the message names squeue."""
    bad_conf = readable_dir / "slurm.conf"
    bad_conf.write_text("Garbage=\n")  # squeue: fatal: Unable to process configuration file
    bad_conf.chmod(0o644)
    with open_transport(dest) as t, pytest.raises(TransportError) as err:
        t.run(squeue_command(), env={"SLURM_CONF": str(bad_conf)})
    msg = str(err.value)
    label = "local" if dest.is_local else f"127.0.0.1:{dest.ssh.port}"
    assert msg.startswith(f"squeue failed (exit 1) on {label}: ")
    assert msg.endswith("squeue: fatal: Unable to process configuration file")
    assert "SQUEUE_" not in msg and "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["squeue", "-h"], "squeue"),
        (["/opt/sge/bin/lx-amd64/qstat", "-xml"], "qstat"),
        (["env", "-u", "A", "--unset", "B", "-i", "X=1", "--", "sinfo"], "sinfo"),
        (["timeout", "-k", "2", "--signal=TERM", "30", "env", "X=1", "qhost"], "qhost"),
        (["env", "X=1"], "env"),
    ],
)
def test_command_name(argv: list[str], name: str) -> None:
    assert command_name(argv) == name


def test_command_timeout_closes_channel_and_keeps_connection(dest: DestinationConfig) -> None:
    dest = replace(dest, ssh=replace(dest.ssh, command_timeout=1.0))
    with open_transport(dest) as t:
        with pytest.raises(TransportError, match=r"command timed out after 1s: sleep 30"):
            t.run(["sleep", "30"])
        assert t.run(["echo", "still", "usable"]) == "still usable\n"


def remote_alive(pattern: str) -> bool:
    """Is a process matching ``pattern`` running? sshd is on this machine, so pgrep sees its commands."""
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


@pytest.mark.parametrize("ignores_term", [False, True], ids=["term", "kill"])
def test_command_timeout_kills_the_remote_command(sshd: SSHServer, ignores_term: bool) -> None:
    """Closing the channel alone would leave a hung command running on the head node."""
    seconds = f"{random.randint(100_000, 999_999)}.{os.getpid()}"  # unique: pgrep finds only ours
    trap = 'trap "" TERM; ' if ignores_term else ""  # ignored TERM is inherited: only -k KILL works
    dest = sshd.destination("d", "node", command_timeout=1.0)
    with open_transport(dest) as t:
        with pytest.raises(TransportError, match=r"^127.0.0.1:\d+: command timed out after 1s: sh -c"):
            t.run(["sh", "-c", f"{trap}sleep {seconds}"])
        wait_for(lambda: not remote_alive(f"sleep {seconds}"), timeout=10, what=f"sleep {seconds} to die")
        assert t.run(["echo", "still", "usable"]) == "still usable\n"


def test_exit_124_from_a_quick_command_is_not_a_timeout(dest: DestinationConfig) -> None:
    with open_transport(dest) as t, pytest.raises(TransportError, match=r"^sh failed \(exit 124\)"):
        t.run(["sh", "-c", "exit 124"])


def test_invalid_env_name_rejected(dest: DestinationConfig) -> None:
    with open_transport(dest) as t, pytest.raises(TransportError, match="invalid environment variable"):
        t.run(["true"], env={"A;B": "1"})


def test_local_missing_command() -> None:
    with open_transport(local_dest()) as t:
        assert isinstance(t, LocalTransport)
        with pytest.raises(TransportError, match="local: cannot run no-such-command-xyz"):
            t.run(["no-such-command-xyz"])


def test_wrong_key_refused(sshd: SSHServer, tmp_path: Path) -> None:
    other = make_key(tmp_path / "other_key")
    dest = sshd.destination("d", "node", key_file=str(other))
    with pytest.raises(
        TransportError, match=rf"127.0.0.1:{sshd.port}: authentication failed for user mstest"
    ):
        open_transport(dest)


def test_missing_key_file(sshd: SSHServer, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot read key file"):
        open_transport(sshd.destination("d", "node", key_file=str(tmp_path / "nope")))


def test_unknown_host_key_refused_by_default(sshd: SSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(TransportError, match=rf"127.0.0.1:{sshd.port}: unknown host key .* accept-new"):
        open_transport(sshd.destination("d", "node", known_hosts=str(empty)))
    assert empty.read_text() == ""


def test_accept_new_appends_then_strict_works(sshd: SSHServer, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("# site keys\n")
    with open_transport(
        sshd.destination("d", "node", known_hosts=str(kh), host_key_policy="accept-new")
    ) as t:
        assert t.run(["true"]) == ""
    key_type, key_b64 = sshd.host_key_pub.read_text().split()[:2]
    assert kh.read_text() == f"# site keys\n[127.0.0.1]:{sshd.port} {key_type} {key_b64}\n"
    with open_transport(sshd.destination("d", "node", known_hosts=str(kh))) as t:
        assert t.run(["echo", "ok"]) == "ok\n"


def test_changed_host_key_refused_even_with_accept_new(sshd: SSHServer, tmp_path: Path) -> None:
    impostor = make_key(tmp_path / "impostor")
    key_type, key_b64 = Path(f"{impostor}.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key_b64}\n")
    before = kh.read_text()
    for policy in ("strict", "accept-new"):
        dest = sshd.destination("d", "node", known_hosts=str(kh), host_key_policy=policy)
        with pytest.raises(TransportError, match=rf"127.0.0.1:{sshd.port}: host key CHANGED"):
            open_transport(dest)
    assert kh.read_text() == before


def test_closed_port_refused(sshd: SSHServer) -> None:
    port = free_port()
    dest = sshd.destination("d", "node", port=port)
    with pytest.raises(TransportError, match=rf"^127.0.0.1:{port}: connection refused$"):
        open_transport(dest)


def test_connect_timeout_when_server_never_answers(sshd: SSHServer) -> None:
    """A listener that accepts TCP but never speaks SSH (a hung sshd) must not hang collect."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        dest = sshd.destination("d", "node", port=port, connect_timeout=1.0)
        with pytest.raises(TransportError, match=rf"127.0.0.1:{port}: connect timed out after 1s"):
            open_transport(dest)


def test_unresolvable_host(sshd: SSHServer) -> None:
    dest = DestinationConfig(
        id="d", scheduler="node", host="no-such-host.invalid", ssh=sshd.ssh_settings(connect_timeout=2.0)
    )
    with pytest.raises(TransportError, match=r"no-such-host\.invalid"):
        open_transport(dest)
