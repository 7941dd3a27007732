"""Scale benchmark (issue 2): a 100,000-job squeue output parsed and stored in SQLite in <= 5 s.

The output is generated in exactly the format the Slurm adapter asks for (``squeue_command()``:
``-O`` fields ending in the \\x1f separator, ``SLURM_TIME_FORMAT=%FT%T%z`` timestamps, the free-text
job name last), with a realistic mix: ~30 % running, pending jobs in submission bursts, Galaxy job
names ``g<id>_<tool>_<user>`` for half of them, a few GPU and multi-node jobs.

Each run times a steady-state collect tick: ``parse_squeue`` of the new output, then
``Store.write_snapshot`` replacing a previous 100k-job snapshot of the same destination (about 10 %
of the jobs finished meanwhile, so finished-job history is detected and written too). The first write
into an empty database is timed as well. Medians over ``--runs``.

Side by side, in the same run on the same data, two straightforward references: a one-pass parser
(``line.split(SEP)`` per line, the same Job fields converted field by field, no caching, no TRES or
array handling) and a plain ``sqlite3`` store (one transaction: DELETE the destination's rows, then
``executemany`` INSERT of every job into a table with the same columns and unique index, WAL on). The
ratios say what metasched's parsing and storing cost against them (below 1: faster than the reference).

    python bench/bench_scale.py [--jobs 100000] [--runs 3] [--check]

``--check`` exits 1 when the median parse + store total is above 5 s (timings are noisy on a busy
machine: the tests never assert wall times).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metasched.domain.jobs import HELD, PENDING, RUNNING, Job, Snapshot
from metasched.schedulers.slurm import SEP, SQUEUE_FIELDS, parse_squeue
from metasched.store import Store

LIMIT_S = 5.0
TOOLS = ("bowtie2", "bwa_mem", "fastqc", "hisat2", "cat1", "featurecounts", "multiqc", "samtools_sort")
USERS = ("alice", "bob_example_org", "carol", "dave_uni_de")
PARTITIONS = ("main", "long", "gpu", "bigmem")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S+0000")


def squeue_output(jobs: int, first_id: int, seed: int) -> str:
    """``jobs`` lines of squeue output (ids first_id...) as ``squeue_command()`` prints them."""
    rng = random.Random(seed)
    lines = []
    burst = T0
    for k in range(jobs):
        job_id = first_id + k
        if k % 50 == 0:  # submissions come in bursts: many jobs share a timestamp
            burst = T0 - timedelta(seconds=rng.randrange(1, 86400))
        running = rng.random() < 0.3
        cpus = rng.choice((1, 1, 2, 4, 8, 16))
        nodes = 2 if cpus == 16 and rng.random() < 0.2 else 1
        mem = rng.choice((500, 1000, 4000, 16000))
        partition = rng.choice(PARTITIONS)
        per_node = "gres:gpu:1" if partition == "gpu" else "N/A"
        tres = f"cpu={cpus},mem={mem}M,node={nodes},billing={cpus}"
        if running:
            state, reason = "RUNNING", "None"
            start = _ts(burst + timedelta(seconds=rng.randrange(1, 3600)))
            evaluated, nodelist = start, f"c{rng.randrange(1, 2000):04d}"
        else:
            state = "PENDING"
            reason = rng.choice(("Priority", "Priority", "Resources", "Dependency", "QOSMaxCpuPerUserLimit"))
            start, nodelist = "N/A", ""
            evaluated = _ts(T0 - timedelta(seconds=rng.randrange(1, 60)))
            if reason != "Dependency" and rng.random() < 0.5:  # backfill's expected start
                start = _ts(T0 + timedelta(seconds=rng.randrange(60, 86400)))
        user = rng.choice(USERS)
        if k % 2:
            name = f"g{10_000_000 + job_id}_{rng.choice(TOOLS)}_{user}"
        else:
            name = rng.choice(("run.sh", "align sample 7", "pipeline|step=2", "snakejob.map.12.sh"))
        fields = (
            str(job_id),
            partition,
            "galaxy" if k % 2 else user,
            state,
            reason,
            str(cpus),
            str(nodes),
            str(nodes),
            f"{mem}M",
            tres,
            "N/A",
            per_node,
            "N/A",
            _ts(burst),
            start,
            evaluated,
            nodelist,
            name,
        )
        lines.append("".join(f + SEP for f in fields))
    assert len(fields) == len(SQUEUE_FIELDS)
    return "\n".join(lines) + "\n"


def _time(text: str) -> datetime | None:
    return None if text == "N/A" else datetime.fromisoformat(text).astimezone(UTC)


def reference_parse(text: str) -> list[Job]:
    """The straightforward one-pass parser: split each line, convert each field as it comes."""
    jobs = []
    for line in text.splitlines():
        f = line.split(SEP)
        state = f[3]
        start = _time(f[14])
        jobs.append(
            Job(
                job_id=f[0],
                state=RUNNING if state == "RUNNING" else PENDING if state == "PENDING" else HELD,
                partition=f[1],
                name=f[17],
                user=f[2],
                raw_state=state,
                reason="" if f[4] == "None" else f[4],
                cores=int(f[5]),
                mem_mb=int(f[8].rstrip("M")),
                gpus=1 if "gpu" in f[11] else 0,
                submit_time=_time(f[13]),
                start_time=start if state == "RUNNING" else None,
                nodes=f[16],
                start_estimate=start if state == "PENDING" else None,
                estimated_at=_time(f[15]) if state == "PENDING" and start is not None else None,
            )
        )
    return jobs


_REF_COLUMNS = (
    "destination, job_id, state, raw_state, partition, name, user, reason, cores, mem_mb, gpus, "
    "submit_time, start_time, nodes, start_estimate, estimated_at"
)


_REF_TABLE = (
    "CREATE TABLE IF NOT EXISTS job (id INTEGER PRIMARY KEY, destination TEXT NOT NULL, "
    "job_id TEXT NOT NULL, "
    "state TEXT, raw_state TEXT, partition TEXT, name TEXT, user TEXT, reason TEXT, cores INTEGER, "
    "mem_mb INTEGER, gpus INTEGER, submit_time TEXT, start_time TEXT, nodes TEXT, start_estimate TEXT, "
    "estimated_at TEXT)"
)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def reference_store(db: Path, dest: str, jobs: list[Job]) -> None:
    """The plain sqlite3 store: replace ``dest``'s rows in one transaction with executemany."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_REF_TABLE)
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS job_dest_id ON job (destination, job_id)")
        with conn:
            conn.execute("DELETE FROM job WHERE destination = ?", (dest,))
            conn.executemany(
                f"INSERT INTO job ({_REF_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                (
                    (
                        dest,
                        j.job_id,
                        j.state,
                        j.raw_state,
                        j.partition,
                        j.name,
                        j.user,
                        j.reason,
                        j.cores,
                        j.mem_mb,
                        j.gpus,
                        _iso(j.submit_time),
                        _iso(j.start_time),
                        j.nodes,
                        _iso(j.start_estimate),
                        _iso(j.estimated_at),
                    )
                    for j in jobs
                ),
            )
    finally:
        conn.close()


@dataclass
class Timings:
    first: float  # first write into an empty database
    parse: float
    store: float  # replacing write
    finished: int  # history rows the replacing write recorded
    ref_parse: float
    ref_store: float  # replacing write of the plain sqlite3 reference


def run_once(workdir: Path, jobs: int, seed: int) -> Timings:
    """Every figure of one run, on one fresh database (and one for the reference)."""
    previous = parse_squeue(squeue_output(jobs, 1, seed))
    shift = jobs // 10  # 10 % of the previous jobs finished, as many new ones arrived
    text = squeue_output(jobs, 1 + shift, seed + 1)
    db = workdir / f"bench-{seed}.db"
    with Store.open(str(db)) as store:
        t = time.perf_counter()
        store.write_snapshot("slurm_bench", Snapshot(jobs=previous), run_id="prev", started=T0, finished=T0)
        first = time.perf_counter() - t
        now = T0 + timedelta(minutes=1)
        t = time.perf_counter()
        parsed = parse_squeue(text)
        parse_s = time.perf_counter() - t
        t = time.perf_counter()
        result = store.write_snapshot(
            "slurm_bench", Snapshot(jobs=parsed), run_id="now", started=now, finished=now
        )
        store_s = time.perf_counter() - t
    assert result.jobs == jobs
    t = time.perf_counter()
    ref_jobs = reference_parse(text)
    ref_parse = time.perf_counter() - t
    assert len(ref_jobs) == len(parsed)
    ref_db = workdir / f"reference-{seed}.db"
    reference_store(ref_db, "slurm_bench", previous)
    t = time.perf_counter()
    reference_store(ref_db, "slurm_bench", parsed)
    ref_store = time.perf_counter() - t
    return Timings(first, parse_s, store_s, result.finished, ref_parse, ref_store)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check", action="store_true", help=f"exit 1 when parse + store exceeds {LIMIT_S} s")
    args = ap.parse_args()
    runs: list[Timings] = []
    with tempfile.TemporaryDirectory(prefix="metasched-bench-") as tmp:
        for i in range(args.runs):
            r = run_once(Path(tmp), args.jobs, seed=2 * i)
            runs.append(r)
            print(
                f"run {i + 1}: parse {r.parse:.2f} s (reference {r.ref_parse:.2f} s), store {r.store:.2f} s "
                f"(replacing; {r.finished} finished jobs recorded; reference {r.ref_store:.2f} s), total "
                f"{r.parse + r.store:.2f} s; first write into an empty db {r.first:.2f} s",
                flush=True,
            )

    def med(values: list[float]) -> float:
        return statistics.median(values)

    parse_s, store_s = med([r.parse for r in runs]), med([r.store for r in runs])
    ref_parse, ref_store = med([r.ref_parse for r in runs]), med([r.ref_store for r in runs])
    total, ref_total = med([r.parse + r.store for r in runs]), med([r.ref_parse + r.ref_store for r in runs])
    print(f"jobs: {args.jobs}, medians of {args.runs} runs")
    print(f"{'':8s}{'metasched':>12s}{'reference':>12s}{'ratio':>8s}   reference")

    def row(label: str, ours: float, ref: float, what: str = "") -> None:
        print(f"{label:8s}{ours:11.2f}s{ref:11.2f}s{ours / ref:7.2f}x   {what}".rstrip())

    row("parse", parse_s, ref_parse, "one-pass line.split(SEP)")
    row("store", store_s, ref_store, "sqlite3 executemany")
    row("total", total, ref_total)
    print(f"first write into an empty db: {med([r.first for r in runs]):.2f} s")
    print(f"total (median):  {total:.2f} s  -> {args.jobs / total:,.0f} jobs/s")
    ok = total <= LIMIT_S
    print(f"total <= {LIMIT_S:.0f} s:    {'yes' if ok else 'NO'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
