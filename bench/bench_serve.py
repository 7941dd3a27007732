"""P3: `POST /v1/rank` with 50 destinations on `metasched serve`: >= 1,000 requests/s with p99 <= 20 ms.

Run: python bench/bench_serve.py [--duration 10] [--connections 8]

Builds a SQLite store with 50 collected destinations (nodes, running and pending jobs, finished-job
history for the requested tool), starts `metasched serve` as its own process (its collect loop
running on a local node destination), and loads it with Debian's `wrk` from another process: first
`GET /ping` (a trivial endpoint of the same server), then `POST /v1/rank`. Prints requests/s, the
p99 latency, the ratio of the two, and PASS/FAIL against the targets. Exit 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metasched.collect.types import PENDING, RUNNING, Job, Node, Snapshot
from metasched.store import Store

DESTINATIONS = 50
TARGET_RPS = 1000.0
TARGET_P99_MS = 20.0
TOOL = "toolshed.g2.bx.psu.edu/repos/devteam/bowtie2/bowtie2/2.5.0"


def build_state(db: Path) -> dict[str, object]:
    """50 destinations' snapshots (two each, so jobs that vanished become history); the request."""
    now = datetime.now(UTC)
    with Store.open(str(db)) as store:
        for i in range(DESTINATIONS):
            dest = f"dest{i:02d}"
            nodes = [
                Node(f"n{j}", "mixed", j != 0, 32, (i + j) % 32, 128_000, 4_000 * (j % 8), gpus_total=j % 2)
                for j in range(16)
            ]
            submit = now - timedelta(hours=2)
            first = [
                Job(
                    f"h{k}",
                    RUNNING,
                    "main",
                    f"g{k}_bowtie2_u",
                    cores=4,
                    submit_time=submit,
                    start_time=submit + timedelta(seconds=30 * (k + i)),
                )
                for k in range(10)
            ]
            later = now - timedelta(minutes=5)
            store.write_snapshot(dest, Snapshot(nodes, (), first), run_id="a", started=later, finished=later)
            jobs = [
                Job(
                    f"j{k}",
                    PENDING if k % 3 else RUNNING,
                    "main",
                    f"g{100 + k}_bowtie2_u",
                    cores=2 + k % 4,
                    submit_time=now - timedelta(minutes=k),
                    start_time=None if k % 3 else now,
                )
                for k in range(40 + i)
            ]
            store.write_snapshot(dest, Snapshot(nodes, (), jobs), run_id="b", started=now, finished=now)
    return {
        "job": {"tool_id": TOOL, "cores": 4, "mem": 8},
        "destinations": [
            {"id": f"dest{i:02d}", "tpv_score": i % 3, "latitude": 40 + i % 20, "longitude": -10 + i}
            for i in range(DESTINATIONS)
        ],
        "datasets": {str(k): {"object_store_id": f"os{k % 3}", "size": 10**9 * (k + 1)} for k in range(5)},
        "objectstores": {f"os{k}": {"latitude": 50 + k, "longitude": 8 + k} for k in range(3)},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wrk(url: str, duration: int, connections: int, script: Path | None) -> tuple[float, float, str]:
    """(requests/s, p99 ms, raw output) of one wrk run."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return rps, p99, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="metasched-bench-serve-"))
    db = work / "state.db"
    request = build_state(db)
    body = work / "request.json"
    body.write_text(json.dumps(request))
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    config = work / "config.yml"
    config.write_text("destinations:\n  - {id: bench-host, scheduler: node, host: local}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METASCHED_")}
    env["HOME"] = str(work)
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metasched",
            "serve",
            "-c",
            str(config),
            "--database",
            str(db),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print((work / "serve.log").read_text(), file=sys.stderr)
                    return 2
                time.sleep(0.2)
        req = urllib.request.Request(f"{base}/v1/rank", data=body.read_bytes(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.load(r)
        assert len(answer["sorted_destinations"]) == DESTINATIONS, answer
        wrk(f"{base}/ping", 2, args.connections, None)  # warm-up
        wrk(f"{base}/v1/rank", 2, args.connections, script)
        ping_rps, ping_p99, _ = wrk(f"{base}/ping", args.duration, args.connections, None)
        rank_rps, rank_p99, _ = wrk(f"{base}/v1/rank", args.duration, args.connections, script)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    ok = rank_rps >= TARGET_RPS and rank_p99 <= TARGET_P99_MS
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(
        f"GET  /ping      {ping_rps:10,.0f} req/s   p99 {ping_p99:7.2f} ms   (trivial endpoint, same server)"
    )
    print(f"POST /v1/rank   {rank_rps:10,.0f} req/s   p99 {rank_p99:7.2f} ms   ({DESTINATIONS} destinations)")
    print(f"ratio rank/ping {rank_rps / ping_rps:.3f}")
    print(
        f"P3 {'PASS' if ok else 'FAIL'}: need >= {TARGET_RPS:,.0f} req/s and p99 <= {TARGET_P99_MS:g} ms "
        f"({args.connections} connections, {args.duration}s, wrk in its own process)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
