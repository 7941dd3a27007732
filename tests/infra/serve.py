"""`metasched serve` as the tests start it: a real subprocess on a free loopback port, stopped by its
own PID (the ``servers`` fixture), with the helpers the serve tests share (config files, the CLI,
Prometheus samples)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.infra.procs import free_port, wait_for


def metasched() -> list[str]:
    return [sys.executable, "-m", "metasched"]


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASCHED_", "INFLUXDB_"))}
    for key in ("CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "XDG_STATE_HOME"):
        env.pop(key, None)
    env["HOME"] = str(tmp_path / "home")
    return env


@dataclass
class Serve:
    """One running `metasched serve`; ``log`` is its stderr."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"serve did not stop on {sig}:\n{self.text()}") from None


def start_serve(tmp_path: Path, config: Path, *args: str, env: dict[str, str] | None = None) -> Serve:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(
        [*metasched(), "serve", "--config", str(config), "--port", str(port), *args],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env or base_env(tmp_path),
    )
    wait_listening(proc, port, log)
    return Serve(proc, port, log)


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30) -> None:
    """Until the started serve accepts connections on ``port``; its log in the error if it exits."""

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_for(up, timeout, "serve to listen")


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    """Every server a test starts is stopped afterwards, by its own PID."""
    started: list[Serve] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(
    args: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*metasched(), *args], input=stdin, capture_output=True, env=env, timeout=60, check=False
    )


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) -> value, through the Prometheus client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
