"""What both transports share: quoting, environment handling, timeouts and error messages.

So ``host: local`` behaves like a remote head node. Every failure is a one-line ``TransportError``
naming the host.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from metasched.domain.errors import TransportError
from metasched.settings import DestinationConfig

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STDERR_TAIL = 300


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


def one_line(text: str) -> str:
    return " ".join(text.split())


def stderr_tail(text: str) -> str:
    """The end of stderr on one line: where the real error message usually is."""
    text = one_line(text)
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


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


def shown(argv: Sequence[str]) -> str:
    """The command for a message: wrappers dropped, bounded, one line."""
    text = " ".join(shlex.join(_strip_wrappers(argv)).split())
    return text if len(text) <= _SHOWN_ARGS else text[:_SHOWN_ARGS] + "..."


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


class Transport:
    """Base of both transports: implements ``domain.ports.HostRunner`` and the context-manager protocol."""

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
            detail = stderr_tail(err) or "no stderr"
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
