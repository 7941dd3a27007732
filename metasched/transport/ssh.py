"""SSH on paramiko alone: one client per host, reused for every command of every destination on it.

paramiko is imported inside the functions that connect (``rank`` must not pay for it). Host keys are
checked against the configured known_hosts only; no ~/.ssh/config, agent or default keys take part.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any

from metasched.domain.errors import TransportError
from metasched.settings import DestinationConfig
from metasched.transport.base import Transport, build_command, command_name, fmt_seconds, one_line, shown

_CHUNK = 65536
_KILL_AFTER_S = 2  # remote ``timeout -k``: SIGKILL this long after SIGTERM is ignored
_BACKSTOP_GRACE_S = 3.0  # the client gives the remote ``timeout`` this long to report before giving up
# coreutils timeout: 124 when TERM did it; when KILL had to, it kills its own process group too, so
# sshd reports a signal, not a status (paramiko: -1); 137 is how a shell would report that.
_TIMED_OUT = (124, 137, -1)


def _duration(seconds: float) -> str:
    """A ``timeout`` DURATION argument: plain decimal seconds (never ``1e-05``)."""
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")  # 0 would mean no limit at all


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
    """One paramiko ``SSHClient`` per host; each command is a new channel on its connection."""

    def __init__(self, dest: DestinationConfig) -> None:
        super().__init__(dest)
        self._client: Any = None

    @property
    def label(self) -> str:
        return f"{self.dest.host}:{self.dest.ssh.port}"

    def _known_hosts(self) -> Path:
        path = self.dest.ssh.known_hosts or "~/.ssh/known_hosts"
        return Path(path).expanduser()

    def open(self) -> None:
        import paramiko

        ssh = self.dest.ssh
        key_file = Path(ssh.key_file).expanduser() if ssh.key_file else None
        if key_file is not None and not os.access(key_file, os.R_OK):
            raise TransportError(f"{self.label}: cannot read key file {key_file}")
        client = paramiko.SSHClient()
        known_hosts = self._known_hosts()
        if known_hosts.exists():
            try:
                client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise TransportError(f"{self.label}: cannot read known_hosts {known_hosts}: {exc}") from None
        accept_new = ssh.host_key_policy == "accept-new"
        client.set_missing_host_key_policy(_HostKeyPolicy(self.label, known_hosts, accept_new))
        timeout = ssh.connect_timeout
        try:
            client.connect(
                self.dest.host,
                port=ssh.port,
                username=ssh.user,
                key_filename=str(key_file) if key_file is not None else None,
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except TransportError:
            client.close()
            raise
        except Exception as exc:
            client.close()
            raise TransportError(self._connect_error(exc, key_file, known_hosts)) from None
        self._client = client

    def _connect_error(self, exc: Exception, key_file: Path | None, known_hosts: Path) -> str:
        """Turn paramiko/socket errors into one line an operator can act on."""
        import paramiko

        where = self.label
        timeout = fmt_seconds(self.dest.ssh.connect_timeout)
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
        if self._client is None:
            self.open()
        started = time.monotonic()
        backstop = timeout + _KILL_AFTER_S + _BACKSTOP_GRACE_S
        try:
            status, out, err = _exec_channel(self._client.get_transport(), shlex.join(remote), backstop)
            if status in _TIMED_OUT and time.monotonic() - started >= timeout:
                raise _CommandTimeout
        except _CommandTimeout:
            raise TransportError(
                f"{self.label}: command timed out after {fmt_seconds(timeout)}: {shown(argv)}"
            ) from None
        except Exception as exc:
            msg = f"{self.label}: {type(exc).__name__} running {command_name(argv)}: {one_line(str(exc))}"
            raise TransportError(msg) from None
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _CommandTimeout(Exception):
    pass


def _exec_channel(ssh_transport: Any, command: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``command`` on a new channel of an open paramiko transport within ``timeout`` seconds.

    One deadline covers the whole command (output, stderr and exit status); on expiry the channel is
    closed and the connection stays usable for the next command.
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
