"""Exit codes and the exceptions that map onto them.

Every command uses these codes; the README documents them. Core code raises the
exceptions; only the CLI (``metasched.cli.report``) turns them into exit codes and one-line messages.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2  # bad usage, bad config, bad rank request
    PARTIAL = 3  # some destinations failed (collect)


class MetaschedError(Exception):
    """Base class; ``exit_code`` says how the CLI ends."""

    exit_code: ExitCode = ExitCode.UNEXPECTED


class ConfigError(MetaschedError):
    """The configuration cannot be used. ``problems`` holds every ``FILE: key.path: message`` line."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0] if problems else "invalid configuration")


class InputError(MetaschedError):
    """A request (rank JSON) is invalid; the message names the field."""

    exit_code = ExitCode.USAGE


class CollectError(MetaschedError):
    """Collecting one destination failed; the message is stored and shown to operators."""


class TransportError(CollectError):
    """Connecting to or running a command on a destination failed (refused, key, timeout, exit status)."""


class ParseError(CollectError):
    """A scheduler's output could not be read."""


class UnsupportedScheduler(CollectError):
    """The destination names a scheduler without an adapter yet."""
