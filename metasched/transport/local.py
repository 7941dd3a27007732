"""``host: local``: a destination's commands on this machine, with the same contract as SSH."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from metasched.domain.errors import TransportError
from metasched.transport.base import Transport, fmt_seconds, shown


class LocalTransport(Transport):
    """Runs without a shell, environment merged over ours."""

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
            raise TransportError(f"local: cannot run {shown(argv)}: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TransportError(
                f"local: command timed out after {fmt_seconds(timeout)}: {shown(argv)}"
            ) from None
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
