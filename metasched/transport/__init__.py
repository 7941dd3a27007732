"""Run a destination's commands: over SSH (``ssh``, paramiko alone) or on this machine (``local``).

``open_transport`` picks one for a destination; ``connection_key`` says which destinations may share
one login. Both transports implement ``domain.ports.HostRunner``.
"""

from __future__ import annotations

from metasched.settings import DestinationConfig
from metasched.transport.base import Transport
from metasched.transport.local import LocalTransport
from metasched.transport.ssh import SSHTransport


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
