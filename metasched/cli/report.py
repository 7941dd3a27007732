"""Exceptions -> one line on stderr and the documented exit code."""

from __future__ import annotations

import logging
import sys

from metasched.domain.errors import ConfigError, ExitCode, MetaschedError


def report(exc: BaseException, verbose: int = 0) -> int:
    """Print the one-line message (or every config problem) on stderr; return the documented exit code.

    Shared by the Typer commands and rank's Typer-free path so both speak alike.
    """
    if isinstance(exc, ConfigError):
        for line in exc.problems:
            print(line, file=sys.stderr)
        return int(exc.exit_code)
    if isinstance(exc, MetaschedError):
        print(f"metasched: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    if verbose:
        logging.getLogger("metasched").error("unexpected error", exc_info=exc)
    print(f"metasched: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return int(ExitCode.UNEXPECTED)
