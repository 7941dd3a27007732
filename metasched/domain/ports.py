"""The two seams of a collect: a transport runs commands, an adapter knows one scheduler's commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from metasched.domain.jobs import Snapshot


class Runner(Protocol):
    """Runs one command on a destination's host. Implemented by the SSH and local transports.

    ``argv`` is quoted by the transport (never joined by callers); ``env`` is added to the
    command's environment. Raises TransportError on connect failure, timeout or non-zero exit.
    """

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str: ...


class Adapter(Protocol):
    """One per scheduler: which commands to run, and pure parsers of their output."""

    def collect(self, runner: Runner) -> Snapshot: ...
