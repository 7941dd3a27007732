"""Run a destination's commands: over SSH (fabric) or locally.

Both transports share quoting, environment handling, timeouts and error messages, so ``host: local``
behaves like a remote head node. Every failure is a one-line ``TransportError`` naming the host.
fabric/paramiko are imported inside the functions that need them (``rank`` must not pay for them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from metasched.domain.errors import TransportError
from metasched.settings import DestinationConfig

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STDERR_TAIL = 300
_CHUNK = 65536


def build_command(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``env K=V ... argv``: values reach the command verbatim, never through shell expansion.

    Raises ValueError for an empty command or a variable name ``env`` would misread.
    """
    if not argv:
        raise ValueError("empty command")
    for name in env:
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    if not env:
        return list(argv)
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _tail(text: str) -> str:
    """The end of stderr on one line: where the real error message usually is."""
    one_line = _one_line(text)
    return one_line if len(one_line) <= _STDERR_TAIL else "..." + one_line[-_STDERR_TAIL:]


_KILL_AFTER_S = 2  # remote ``timeout -k``: SIGKILL this long after SIGTERM is ignored
_BACKSTOP_GRACE_S = 3.0  # the client gives the remote ``timeout`` this long to report before giving up
# coreutils timeout: 124 when TERM did it; when KILL had to, it kills its own process group too, so
# sshd reports a signal, not a status (paramiko: -1); 137 is how a shell would report that.
_TIMED_OUT = (124, 137, -1)
_ENV_VALUE_OPTS = frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"})
_TIMEOUT_VALUE_OPTS = frozenset({"-k", "--kill-after", "-s", "--signal"})
_SHOWN_ARGS = 100


def _strip_wrappers(argv: Sequence[str]) -> list[str]:
    """``argv`` without leading ``env [options] [NAME=VALUE...]`` and ``timeout [options] DURATION``.

    Error messages name the program that failed, not the environment plumbing around it (Slurm's
    ``env -u SQUEUE_... `` prefix alone is hundreds of characters).
    """
    rest = list(argv)
    while rest and Path(rest[0]).name in ("env", "timeout"):
        wrapper, i = Path(rest[0]).name, 1
        value_opts = _ENV_VALUE_OPTS if wrapper == "env" else _TIMEOUT_VALUE_OPTS
        while i < len(rest):
            arg = rest[i]
            if arg == "--":
                i += 1
                break
            if arg in value_opts:
                i += 2
            elif arg.startswith("-") or (wrapper == "env" and "=" in arg):
                i += 1
            else:
                break
        if wrapper == "timeout":
            i += 1  # the duration
        rest = rest[i:]
    return rest or list(argv)


def command_name(argv: Sequence[str]) -> str:
    """The program an ``argv`` really runs (``squeue`` for Slurm's ``env -u ... squeue ...``)."""
    return Path(_strip_wrappers(argv)[0]).name


def _shown(argv: Sequence[str]) -> str:
    """The command for a message: wrappers dropped, bounded, one line."""
    text = " ".join(shlex.join(_strip_wrappers(argv)).split())
    return text if len(text) <= _SHOWN_ARGS else text[:_SHOWN_ARGS] + "..."


def _duration(seconds: float) -> str:
    """A ``timeout`` DURATION argument: plain decimal seconds (never ``1e-05``)."""
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")  # 0 would mean no limit at all


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


class Transport:
    """Base of both transports: implements ``collect.types.Runner`` and the context-manager protocol."""

    def __init__(self, dest: DestinationConfig) -> None:
        self.dest = dest

    @property
    def label(self) -> str:
        """How errors name the target (``host:port`` or ``local``)."""
        raise NotImplementedError

    def open(self) -> None:
        """Connect (a no-op locally). Raises TransportError."""

    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def _execute(self, argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` with ``env`` added: (exit status, stdout, stderr); TransportError on timeout/I/O."""
        raise NotImplementedError

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        """Run one command with the destination's env plus ``env``; return stdout, raise on non-zero exit."""
        return self.run_for(self.dest, argv, env)

    def for_destination(self, dest: DestinationConfig) -> DestinationRunner:
        """A Runner for ``dest`` over this connection: its own env and command_timeout, shared login.

        For destinations on the same host (``connection_key`` equal), e.g. seed-2's ``node-<ip>`` and
        the scheduler whose master is that node.
        """
        return DestinationRunner(self, dest)

    def run_for(self, dest: DestinationConfig, argv: Sequence[str], env: Mapping[str, str] | None) -> str:
        """``run`` with ``dest``'s env and command_timeout instead of this transport's own destination's."""
        argv = list(argv)
        full_env = {**dest.env, **(env or {})}
        try:
            build_command(argv, full_env)  # validates before anything runs
        except ValueError as exc:
            raise TransportError(f"{self.label}: {exc}") from None
        status, out, err = self._execute(argv, full_env, dest.ssh.command_timeout)
        if status != 0:
            detail = _tail(err) or "no stderr"
            raise TransportError(f"{command_name(argv)} failed (exit {status}) on {self.label}: {detail}")
        return out

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DestinationRunner:
    """One destination's ``Runner`` over a transport shared with other destinations on its host."""

    def __init__(self, transport: Transport, dest: DestinationConfig) -> None:
        self.transport = transport
        self.dest = dest

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        return self.transport.run_for(self.dest, argv, env)


class LocalTransport(Transport):
    """``host: local``: run on this machine without a shell, environment merged over ours."""

    @property
    def label(self) -> str:
        return "local"

    def _execute(self, argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **env},
                start_new_session=True,  # so a timeout kills the whole process group
            )
        except OSError as exc:
            raise TransportError(f"local: cannot run {_shown(argv)}: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TransportError(
                f"local: command timed out after {_fmt_seconds(timeout)}: {_shown(argv)}"
            ) from None
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class _HostKeyPolicy:
    """paramiko missing-host-key policy: refuse (like paramiko's RejectPolicy, with a message naming the
    known_hosts file) or, for ``accept-new``, trust on first use and append the key to known_hosts.

    A key that differs from a known one never reaches this policy: paramiko raises BadHostKeyException.
    """

    def __init__(self, label: str, known_hosts: Path, accept_new: bool) -> None:
        self.label = label
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if not self.accept_new:
            raise TransportError(
                f"{self.label}: unknown host key ({key.get_name()} {key.get_fingerprint().hex()}) not in "
                f"{self.known_hosts}; add it, or set ssh.host_key_policy: accept-new to trust it on first use"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            # Several destinations may learn keys at once: append under a lock, never rewrite the file.
            with self.known_hosts.open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(line)
        except OSError as exc:
            raise TransportError(
                f"{self.label}: cannot record new host key in {self.known_hosts}: {exc}"
            ) from None


class SSHTransport(Transport):
    """One fabric connection per host, reused for all commands of every destination on it."""

    def __init__(self, dest: DestinationConfig) -> None:
        super().__init__(dest)
        self._conn: Any = None

    @property
    def label(self) -> str:
        return f"{self.dest.host}:{self.dest.ssh.port}"

    def _known_hosts(self) -> Path:
        path = self.dest.ssh.known_hosts or "~/.ssh/known_hosts"
        return Path(path).expanduser()

    def open(self) -> None:
        import fabric
        import paramiko

        ssh = self.dest.ssh
        key_file = Path(ssh.key_file).expanduser() if ssh.key_file else None
        if key_file is not None and not os.access(key_file, os.R_OK):
            raise TransportError(f"{self.label}: cannot read key file {key_file}")
        timeout = ssh.connect_timeout
        connect_kwargs: dict[str, Any] = {
            "look_for_keys": False,
            "allow_agent": False,
            "timeout": timeout,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
        }
        if key_file is not None:
            connect_kwargs["key_filename"] = str(key_file)
        # lazy + an explicit empty SSHConfig: the product's own settings decide, not ~/.ssh/config,
        # /etc/ssh/ssh_config or ~/.fabric.yml.
        config = fabric.Config(lazy=True, ssh_config=paramiko.SSHConfig())
        conn = fabric.Connection(
            self.dest.host, user=ssh.user, port=ssh.port, config=config, connect_kwargs=connect_kwargs
        )
        # Replace fabric's AutoAddPolicy: host keys are verified against known_hosts.
        known_hosts = self._known_hosts()
        if known_hosts.exists():
            try:
                conn.client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise TransportError(f"{self.label}: cannot read known_hosts {known_hosts}: {exc}") from None
        accept_new = ssh.host_key_policy == "accept-new"
        conn.client.set_missing_host_key_policy(_HostKeyPolicy(self.label, known_hosts, accept_new))
        try:
            conn.open()
        except TransportError:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            raise TransportError(self._connect_error(exc, key_file, known_hosts)) from None
        self._conn = conn

    def _connect_error(self, exc: Exception, key_file: Path | None, known_hosts: Path) -> str:
        """Turn paramiko/socket errors into one line an operator can act on."""
        import paramiko

        where = self.label
        timeout = _fmt_seconds(self.dest.ssh.connect_timeout)
        if isinstance(exc, paramiko.BadHostKeyException):
            return (
                f"{where}: host key CHANGED (got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}, "
                f"{known_hosts} has {exc.expected_key.get_fingerprint().hex()}); refusing to connect"
            )
        if isinstance(exc, paramiko.AuthenticationException):
            key = f"key {key_file}" if key_file else "no key_file configured"
            return f"{where}: authentication failed for user {self.dest.ssh.user} ({key})"
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            errnos = {e.errno for e in exc.errors.values()}
            if errnos <= {111}:  # ECONNREFUSED
                return f"{where}: connection refused"
            return f"{where}: cannot connect: {exc}"
        if isinstance(exc, socket.gaierror):
            return f"{where}: cannot resolve host {self.dest.host!r}: {exc.strerror}"
        if isinstance(exc, TimeoutError):
            return f"{where}: connect timed out after {timeout}"
        if isinstance(exc, paramiko.SSHException):
            if "banner" in str(exc):
                return f"{where}: connect timed out after {timeout} (no SSH banner)"
            if "No existing session" in str(exc):  # the handshake outlived start_client's wait
                return f"{where}: connect timed out after {timeout} (SSH handshake did not complete)"
            return f"{where}: SSH error: {exc}"
        if isinstance(exc, OSError):
            return f"{where}: cannot connect: {exc.strerror or exc}"
        return f"{where}: cannot connect: {type(exc).__name__}: {exc}"

    def _execute(self, argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        # Closing the channel does not stop the remote command (no pty, no SIGHUP): coreutils timeout
        # kills its process group on the head node, so a hung qstat cannot pile up one process per
        # timer tick. The client deadline, a little later, is the backstop if even that does not answer.
        remote = ["timeout", "-k", str(_KILL_AFTER_S), _duration(timeout), *build_command(argv, env)]
        if self._conn is None:
            self.open()
        started = time.monotonic()
        backstop = timeout + _KILL_AFTER_S + _BACKSTOP_GRACE_S
        try:
            status, out, err = _exec_channel(self._conn.client.get_transport(), shlex.join(remote), backstop)
            if status in _TIMED_OUT and time.monotonic() - started >= timeout:
                raise _CommandTimeout
        except _CommandTimeout:
            raise TransportError(
                f"{self.label}: command timed out after {_fmt_seconds(timeout)}: {_shown(argv)}"
            ) from None
        except Exception as exc:
            msg = f"{self.label}: {type(exc).__name__} running {command_name(argv)}: {_one_line(str(exc))}"
            raise TransportError(msg) from None
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _CommandTimeout(Exception):
    pass


def _exec_channel(ssh_transport: Any, command: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``command`` on a new channel of an open paramiko transport within ``timeout`` seconds.

    Not fabric's ``Connection.run(timeout=...)``: invoke's timer thread can lose the race against the
    closing channel and report a killed command as exit -1 instead of a timeout. Here one deadline
    covers the whole command, and on expiry the channel is closed (the connection stays usable).
    """
    deadline = time.monotonic() + timeout
    if ssh_transport is None or not ssh_transport.is_active():
        raise EOFError("SSH connection is closed")
    chan = ssh_transport.open_session(timeout=timeout)
    err_chunks: list[bytes] = []

    def read_stderr() -> None:
        with contextlib.suppress(Exception):  # ends on EOF, timeout or a closed channel
            while data := chan.recv_stderr(_CHUNK):
                err_chunks.append(data)

    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        chan.shutdown_write()  # no stdin: a command that reads it sees EOF instead of hanging
        stderr_reader = threading.Thread(target=read_stderr, name="ssh-stderr", daemon=True)
        stderr_reader.start()
        out_chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _CommandTimeout
            chan.settimeout(remaining)
            try:
                data = chan.recv(_CHUNK)
            except TimeoutError:
                raise _CommandTimeout from None
            if not data:
                break
            out_chunks.append(data)
        stderr_reader.join(max(0.0, deadline - time.monotonic()))
        if stderr_reader.is_alive() or not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise _CommandTimeout
        status = int(chan.recv_exit_status())
    finally:
        chan.close()
    return status, b"".join(out_chunks), b"".join(err_chunks)


def connection_key(dest: DestinationConfig) -> tuple[object, ...] | None:
    """Destinations with equal keys can share one SSH connection; None: local, nothing to share.

    Everything that decides where and how the login happens is in the key; env and command_timeout
    are per command, so they are not.
    """
    if dest.is_local:
        return None
    ssh = dest.ssh
    return (
        dest.host,
        ssh.port,
        ssh.user,
        ssh.key_file,
        ssh.known_hosts,
        ssh.host_key_policy,
        ssh.connect_timeout,
    )


def open_transport(dest: DestinationConfig) -> Transport:
    """Connect to ``dest`` (SSH) or prepare local execution; use as a context manager."""
    transport: Transport = LocalTransport(dest) if dest.is_local else SSHTransport(dest)
    transport.open()
    return transport
