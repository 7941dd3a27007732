"""The units in systemd/: `systemd-analyze verify` (Debian's systemd 252) on copies whose ExecStart is the
installed `metasched`, plus the properties the deployment relies on (no secrets in Environment=,
credentials, shared state directory, hardening)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
NAMES = ("metasched-collect.service", "metasched-collect.timer", "metasched-serve.service")
INSTALLED = "/opt/metasched/bin/metasched"


def _parse(name: str) -> dict[str, dict[str, list[str]]]:
    """Unit files allow repeated keys; keep every value in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_units_verify_cleanly(tmp_path: Path) -> None:
    exe = shutil.which("metasched")
    assert exe is not None, "verify needs the installed console script (pip install -e .)"
    for name in NAMES:
        text = (UNITS / name).read_text()
        if name.endswith(".service"):
            assert f"ExecStart={INSTALLED} " in text
        (tmp_path / name).write_text(text.replace(INSTALLED, exe))
    proc = subprocess.run(
        ["systemd-analyze", "verify", *[str(tmp_path / n) for n in NAMES]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys are only warnings: none allowed


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a missing ExecStart binary fails verification."""
    unit = tmp_path / "metasched-serve.service"
    unit.write_text(
        (UNITS / "metasched-serve.service").read_text().replace(INSTALLED, "/nonexistent/metasched")
    )
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("name", ["metasched-collect.service", "metasched-serve.service"])
def test_service_hardening_and_secrets(name: str) -> None:
    svc = _parse(name)["Service"]
    assert svc["User"] == ["metasched"] and svc["Group"] == ["metasched"]
    assert svc["StateDirectory"] == ["metasched"] and svc["ConfigurationDirectory"] == ["metasched"]
    assert "Environment" not in svc and "EnvironmentFile" not in svc  # secrets travel as credentials
    assert any(v.startswith("ssh-key:") for v in svc["LoadCredential"])
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
    }.items():
        assert svc[key] == [value], key
    assert "@system-service" in svc["SystemCallFilter"]
    assert "ProcSubset" not in svc  # would hide /proc/meminfo and /proc/loadavg from local node probes
    # Both units use one runtime directory that survives the oneshot's stop (PostgreSQL collect lock).
    assert svc["RuntimeDirectory"] == ["metasched"] and svc["RuntimeDirectoryPreserve"] == ["yes"]
    assert "Documentation" not in _parse(name)["Unit"]


def test_collect_is_oneshot_on_a_jittered_timer_and_serve_restarts() -> None:
    collect = _parse("metasched-collect.service")["Service"]
    assert collect["Type"] == ["oneshot"]
    timer = _parse("metasched-collect.timer")["Timer"]
    assert timer["OnUnitActiveSec"] == ["1min"] and "OnBootSec" in timer and "RandomizedDelaySec" in timer
    serve = _parse("metasched-serve.service")["Service"]
    assert serve["Restart"] == ["on-failure"]
    assert serve["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert serve["ExecStart"] == [f"{INSTALLED} serve"]


def test_example_config_lines_for_credentials_load(tmp_path: Path) -> None:
    """The config docs/serve.md shows for systemd loads, with the key under $CREDENTIALS_DIRECTORY."""
    from metasched.settings import load_config

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "ssh-key").write_text("KEY\n")
    (creds / "serve-token").write_text("s3cret\n")
    cfg_file = tmp_path / "config.yml"
    cfg_file.write_text(
        "ssh:\n  user: metasched\n  key_file: ${CREDENTIALS_DIRECTORY}/ssh-key\n"
        "  known_hosts: /etc/metasched/known_hosts\n"
        "destinations:\n  - {id: hpc, scheduler: slurm, host: hpc.example.org}\n"
    )
    cfg = load_config(cfg_file, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.destinations[0].ssh.key_file == str(creds / "ssh-key")
    assert cfg.serve.token == "s3cret"
