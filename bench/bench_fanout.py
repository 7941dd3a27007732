"""Fan-out benchmark of `metasched collect` (issue 2): 32 destinations vs 1, wall ratio <= 2.0.

Starts 32 real OpenSSH servers on loopback (the same helper the test fixtures use; login as the
non-root user ``mstest``), one ``node`` destination per server, and measures, alternating sizes so
machine noise hits both alike:

- the ``metasched collect`` command as the timer runs it (process start, config, SSH, store): the
  wall an operator sees, and the figure the limit is checked against;
- ``collect_all`` in-process (connect, run the node command, store the snapshot in SQLite), 32 vs 1,
  and 32 with ``fanout: 1`` (serial) to show what the fan-out buys.

    python bench/bench_fanout.py [--runs 7] [--servers 32] [--check]

It also prints the CPU time of metasched and of the sshd servers per run: on loopback the servers
share the machine's CPUs with the collector, so on a small machine the sshd side of 32 logins (process
creation, key exchange) can bound the 32-destination wall time rather than metasched itself.

Run as root (it starts sshd and creates ``mstest`` when missing). ``--check`` exits 1 when the ratio
is above 2.0 (timings are noisy on a busy machine: the tests never assert wall times).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metasched.app.collect import collect_all
from metasched.settings import CollectSettings, Config, DestinationConfig, SSHSettings
from metasched.store import Store
from tests.infra.sshd import SSHDFactory, SSHServer, make_base_dir

LIMIT = 2.0


def config(db: Path, dests: list[DestinationConfig], fanout: int) -> Config:
    return Config(
        path=None,
        database=str(db),
        ssh=SSHSettings(),
        destinations=tuple(dests),
        collect=CollectSettings(fanout=fanout),
    )


def server_cpu_s(factory: SSHDFactory) -> float:
    """CPU seconds of every sshd (its reaped per-connection children included) from /proc."""
    ticks = 0
    for server in factory.servers:
        assert server.proc is not None
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_config(path: Path, db: Path, servers: list[SSHServer]) -> Path:
    """The same destinations as a YAML file for the real command."""
    dests = [
        {
            "id": f"node{i:02d}",
            "scheduler": "node",
            "host": s.host,
            "port": s.port,
            "user": s.user,
            "key_file": str(s.key_file),
            "known_hosts": str(s.known_hosts),
        }
        for i, s in enumerate(servers)
    ]
    path.write_text(yaml.safe_dump({"database": str(db), "destinations": dests}))
    return path


def timed_command(config_path: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "metasched", "collect", "-c", str(config_path)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"metasched collect exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return wall


def timed_collect(cfg: Config, store: Store) -> float:
    t0 = time.perf_counter()
    report = collect_all(cfg, store)
    wall = time.perf_counter() - t0
    if report.failed_count:
        failed = [f"{r.id}: {r.error}" for r in report.results if not r.ok]
        raise SystemExit("collect failed:\n  " + "\n  ".join(failed))
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each size (default 7)")
    parser.add_argument("--servers", type=int, default=32, help="sshd servers / destinations (default 32)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio exceeds {LIMIT}")
    args = parser.parse_args()

    base, key = make_base_dir()
    factory = SSHDFactory(base, key)
    try:
        t0 = time.perf_counter()
        servers = factory.many(args.servers)
        print(f"started {len(servers)} sshd servers in {time.perf_counter() - t0:.2f}s")
        dests = [s.destination(f"node{i:02d}", "node") for i, s in enumerate(servers)]
        db = base / "state.db"
        many = config(db, dests, fanout=args.servers)
        one = config(db, dests[:1], fanout=args.servers)
        serial = config(db, dests, fanout=1)
        cfg_one = write_config(base / "one.yml", db, servers[:1])
        cfg_many = write_config(base / "many.yml", db, servers)
        timed_command(cfg_many)  # warm-up: bytecode, schema, first logins
        commands: dict[str, list[float]] = {"1": [], str(args.servers): []}
        for _ in range(args.runs):
            commands["1"].append(timed_command(cfg_one))
            commands[str(args.servers)].append(timed_command(cfg_many))
        with Store.open(str(db)) as store:
            serial_walls = [timed_collect(serial, store) for _ in range(2)]
            walls: dict[str, list[float]] = {"1": [], str(args.servers): []}
            cpu = {"1": [0.0, 0.0], str(args.servers): [0.0, 0.0]}  # client, server CPU seconds
            for _ in range(args.runs):
                for name, cfg in (("1", one), (str(args.servers), many)):
                    c0, s0 = client_cpu_s(), server_cpu_s(factory)
                    walls[name].append(timed_collect(cfg, store))
                    time.sleep(0.2)  # let the sshds reap their session children (their CPU lands then)
                    cpu[name][0] += client_cpu_s() - c0
                    cpu[name][1] += server_cpu_s(factory) - s0
    finally:
        factory.close()
        shutil.rmtree(base, ignore_errors=True)

    n = str(args.servers)
    c1, cn = statistics.median(commands["1"]), statistics.median(commands[n])
    ratio = cn / c1
    print("`metasched collect` command wall (what the timer runs):")
    print(f"  1 destination:   median {c1 * 1000:7.1f} ms  runs {[round(w * 1000) for w in commands['1']]}")
    print(f"  {n} destinations: median {cn * 1000:7.1f} ms  runs {[round(w * 1000) for w in commands[n]]}")
    m1, mn = statistics.median(walls["1"]), statistics.median(walls[n])
    print("collect_all in-process (no interpreter start-up):")
    print(f"  1 destination:   median {m1 * 1000:7.1f} ms  runs {[round(w * 1000) for w in walls['1']]}")
    print(f"  {n} destinations: median {mn * 1000:7.1f} ms  runs {[round(w * 1000) for w in walls[n]]}")
    ms = statistics.median(serial_walls)
    print(f"  {n} destinations serial (fanout 1): median {ms * 1000:7.1f} ms")
    print(f"  in-process ratio {n}/1 = {mn / m1:.2f}; fan-out speed-up over serial = {ms / mn:.1f}x")
    for name, (client, server) in cpu.items():
        print(
            f"CPU per run, {name} destination(s): metasched {client / args.runs * 1000:.0f} ms, "
            f"sshd {server / args.runs * 1000:.0f} ms (on {os.cpu_count()} CPUs shared with the servers)"
        )
    verdict = "ok" if ratio <= LIMIT else "ABOVE LIMIT"
    print(f"command ratio {n}/1 = {ratio:.2f} (limit {LIMIT}) {verdict}")
    return 1 if args.check and ratio > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
