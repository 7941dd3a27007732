"""P1/P2 benchmark of `metasched rank` (issue 3), with the ratios measured in one run.

P1: `metasched rank` on 50 destinations with state in SQLite, median wall <= 1.3 x
    `python -c "import typer, peewee, yaml"`, the two measured alternately.
P2: 1,000 destinations <= 1.5 x the 50-destination wall.

Both the console script and `python -m metasched` are measured. State is written through the
Store API (nodes, queued/running jobs, finished-job history and cached metrics per destination), so
rank reads what a real collect leaves behind. The placement ledger is on (issue 9): every request
carries a new ``job.job_id`` and the store is writable, so every timed rank reads the in-flight
placements and records its own; the count recorded is printed.

    python bench/bench_rank.py [--runs 21] [--check]

Also prints where the rank path's start-up goes: ``python -X importtime -m metasched rank`` once,
the modules with the largest cumulative import time.

``--check`` exits 1 when a limit is missed (timings are noisy on a busy machine: the tests never
assert wall times, this script is for humans and CI dashboards).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from msgspec.structs import replace

from metasched.domain.destination import MetricRow
from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Snapshot
from metasched.store import Store

TOOL = "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.17.2"
P1_LIMIT = 1.3
P2_LIMIT = 1.5
IMPORT_TOP = 12


def build_state(db: Path, n: int) -> None:
    """n destinations, each with 4 nodes, 30 current jobs, 20 finished jobs of TOOL and metric rows."""
    now = datetime.now(UTC)
    t0, t1 = now - timedelta(seconds=90), now - timedelta(seconds=30)
    metrics: list[MetricRow] = []
    with Store.open(str(db)) as store:
        for d in range(n):
            dest = f"dest_{d:04d}"
            nodes = [
                Node(
                    name=f"n{i}",
                    state="mixed",
                    available=i != 3 or d % 7 != 0,
                    cores_total=64,
                    cores_alloc=(d * 7 + i * 13) % 65,
                    mem_total_mb=256_000,
                    mem_alloc_mb=((d + i) * 9_000) % 256_000,
                    gpus_total=2 if d % 5 == 0 else 0,
                )
                for i in range(4)
            ]
            jobs = [
                Job(
                    job_id=str(j),
                    state=PENDING if j % 3 else RUNNING,
                    cores=1 + j % 8,
                    mem_mb=4000,
                    name=f"g{j}_bwa_mem_alice",
                )
                for j in range((d % 30) + 1)
            ]
            finished = [
                Job(
                    job_id=f"h{j}",
                    state=RUNNING,
                    name=f"g{10_000 + j}_bwa_mem_bob",
                    submit_time=t1 - timedelta(seconds=600 + 10 * j + d),
                    start_time=t1 - timedelta(seconds=300 + 5 * j),
                )
                for j in range(20)
            ]
            store.write_snapshot(dest, Snapshot(nodes, (), finished), run_id="b0", started=t0, finished=t0)
            store.write_snapshot(dest, Snapshot(nodes, (), jobs), run_id="b1", started=t1, finished=t1)
            metrics += [
                MetricRow("queue_by_destination", dest, "queued", value=float(d % 11), observed_at=now),
                MetricRow("queue_by_destination", dest, "running", value=float(d % 13), observed_at=now),
                MetricRow(
                    "destination-queue-run-time",
                    dest,
                    "median_run_s",
                    value=400.0 + d,
                    tool_id=TOOL,
                    observed_at=now,
                ),
            ]
        store.replace_metrics("bench", metrics, fetched_at=now)


def build_request(path: Path, n: int, job_id: int) -> None:
    request = {
        "job_info": {"tool_id": TOOL, "job_id": job_id, "cores": 4, "mem": 16, "gpus": 0},
        "objectstores": {
            "eu": {"latitude": 48.0, "longitude": 7.8},
            "au": {"latitude": -33.9, "longitude": 151.2},
        },
        "datasets": {
            str(i): {"object_store_id": "eu" if i % 2 else "au", "size": 10**9 * (i + 1)} for i in range(10)
        },
        "destinations": [
            {
                "id": f"dest_{d:04d}",
                "tpv_score": d % 3,
                "max_accepted_cores": 64,
                "max_accepted_mem": 500,
                "latitude": -60 + (d * 37) % 120,
                "longitude": -170 + (d * 53) % 340,
            }
            for d in range(n)
        ],
    }
    path.write_text(json.dumps(request))


def breakdown(db: Path, request: Path) -> str:
    """Where the time of one in-process ranking goes (ms), to see which part grows with destinations."""
    import gc

    from metasched.app.ranking import rank_outcome, response
    from metasched.rank.request import decode_request, parse_request
    from metasched.settings import load_config

    gc.disable()
    try:
        t0 = time.perf_counter()
        req = parse_request(decode_request(request.read_bytes()))
        t1 = time.perf_counter()
        ids = [d.id for d in req.destinations]
        with Store.open(str(db)) as store:
            t2 = time.perf_counter()
            store.summaries(ids)
            t3 = time.perf_counter()
            store.tool_times(req.job.tool_id, ids)
            t4 = time.perf_counter()
            store.metrics(ids, req.job.tool_id)
            t5 = time.perf_counter()
            cfg = load_config(None, {}, read_secrets=False)
            cfg = replace(cfg, destinations=())
            outcome, warnings = rank_outcome(req, cfg, store, datetime.now(UTC))
            t6 = time.perf_counter()
        json.dumps(response(outcome, warnings))
        t7 = time.perf_counter()
    finally:
        gc.enable()
    ms = [(b - a) * 1000 for a, b in ((t0, t1), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7))]
    return (
        f"parse {ms[0]:.1f}, store.summaries {ms[1]:.1f}, store.tool_times {ms[2]:.1f}, "
        f"store.metrics {ms[3]:.1f}, rank_outcome (reads again + model) {ms[4]:.1f}, json {ms[5]:.1f}"
    )


def import_times(cmd: list[str], env: dict[str, str], top: int = IMPORT_TOP) -> list[str]:
    """``-X importtime`` of one run of ``cmd`` (a ``python -m`` command): the ``top`` modules by
    cumulative import time (a package counts what it imports), then the total over top-level imports."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, check=False, text=True
    )
    rows: list[tuple[int, int, str]] = []  # (cumulative us, self us, name with its nesting)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, cumulative_us, raw = line[len("import time:") :].split("|")
        rows.append((int(cumulative_us), int(self_us), raw.rstrip()))  # nesting: 2 spaces a level
    indent = min((len(n) - len(n.lstrip()) for _, _, n in rows), default=0)
    total = sum(c for c, _, n in rows if len(n) - len(n.lstrip()) == indent)
    shown = sorted(rows, reverse=True)[:top]
    lines = [f"  {c / 1000:8.1f} ms cumulative {s / 1000:7.1f} ms self  {n.strip()}" for c, s, n in shown]
    lines.append(f"  {total / 1000:8.1f} ms all imports of the run (sum over the top-level ones)")
    return lines


def wall(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed, proc.stdout


def ledger_rows(db: Path) -> int:
    with Store.open(str(db)) as store:
        return int(store.db.fetch('SELECT COUNT(*) FROM "placement"', [])[0][0])


class Ranks:
    """Each rank of ``n`` destinations gets a request with a job id of its own (written before the
    timed run), and its answer is checked for a placement that was not recorded."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.next_id = 1
        self.ranks = {50: 0, 1000: 0}
        self.unrecorded = {50: 0, 1000: 0}

    def prepare(self, n: int) -> None:
        build_request(self.work / f"request{n}.json", n, self.next_id)
        self.next_id += 1

    def check(self, n: int, stdout: bytes) -> None:
        self.ranks[n] += 1
        warnings = json.loads(stdout)["warnings"]
        self.unrecorded[n] += any("not recorded" in w for w in warnings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed runs per command (median reported)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a limit is missed")
    args = parser.parse_args()

    # pip compiles bytecode at install time; an editable checkout under PYTHONDONTWRITEBYTECODE would
    # otherwise recompile metasched's modules on every run and measure the compiler, not rank.
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "metasched"), quiet=1)
    script = shutil.which("metasched")
    with tempfile.TemporaryDirectory(prefix="bench-rank-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("METASCHED_", "INFLUXDB_"))}
        env.pop("CONFIGURATION_DIRECTORY", None)
        env["HOME"] = str(work)
        t = time.perf_counter()
        ranks = Ranks(work)
        for n in (50, 1000):
            build_state(work / f"state{n}.db", n)
            ranks.prepare(n)
        print(f"state built in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        base = [sys.executable, "-c", "import typer, peewee, yaml"]
        commands: dict[str, tuple[list[str], dict[str, str], int | None]] = {"baseline": (base, env, None)}
        for n in (50, 1000):
            env_n = {**env, "METASCHED_DATABASE": str(work / f"state{n}.db")}
            req = ["rank", "--request", str(work / f"request{n}.json")]
            if script:
                commands[f"script{n}"] = ([script, *req], env_n, n)
            commands[f"module{n}"] = ([sys.executable, "-m", "metasched", *req], env_n, n)
        details = {n: breakdown(work / f"state{n}.db", work / f"request{n}.json") for n in (50, 1000)}
        samples: dict[str, list[float]] = {k: [] for k in commands}

        def timed(cmd: list[str], env_c: dict[str, str], n: int | None) -> float:
            if n is not None:
                ranks.prepare(n)
            elapsed, stdout = wall(cmd, env_c)
            if n is not None:
                ranks.check(n, stdout)
            return elapsed

        for cmd, env_c, dests in commands.values():  # warm the page cache and .pyc files
            timed(cmd, env_c, dests)
        for _ in range(args.runs):  # alternate, so drift in machine load hits every command alike
            for key, (cmd, env_c, dests) in commands.items():
                samples[key].append(timed(cmd, env_c, dests))
        recorded = {n: ledger_rows(work / f"state{n}.db") for n in (50, 1000)}
        ranks.prepare(50)
        imports = import_times(*commands["module50"][:2])

    med = {k: statistics.median(v) for k, v in samples.items()}
    ok = True
    print(f"runs per command: {args.runs} (median wall, alternated)")
    print(
        "ledger: on (rank.ledger default, a new job.job_id per rank, writable store); placements "
        + ", ".join(
            f"{n} destinations {recorded[n]} recorded of {ranks.ranks[n]} ranks"
            f" ({ranks.unrecorded[n]} not recorded)"
            for n in (50, 1000)
        )
    )
    label0 = 'baseline: python -c "import typer, peewee, yaml"'
    print(f"{label0:<52} {med['baseline'] * 1000:8.1f} ms")
    for kind, label in (("script", "metasched rank"), ("module", "python -m metasched rank")):
        if f"{kind}50" not in med:
            continue
        p1 = med[f"{kind}50"] / med["baseline"]
        p2 = med[f"{kind}1000"] / med[f"{kind}50"]
        ok = ok and p1 <= P1_LIMIT and p2 <= P2_LIMIT
        print(
            f"{'P1 ' + label + ', 50 destinations':<52} {med[f'{kind}50'] * 1000:8.1f} ms  "
            f"ratio {p1:.2f} (limit {P1_LIMIT}) {'ok' if p1 <= P1_LIMIT else 'MISSED'}"
        )
        print(
            f"{'P2 ' + label + ', 1000 destinations':<52} {med[f'{kind}1000'] * 1000:8.1f} ms  "
            f"ratio {p2:.2f} (limit {P2_LIMIT}) {'ok' if p2 <= P2_LIMIT else 'MISSED'}"
        )
    for n, text in details.items():
        print(f"in-process ms, {n} destinations: {text}")
    print(f"-X importtime of python -m metasched rank (50 destinations), top {IMPORT_TOP} by cumulative:")
    print("\n".join(imports))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
