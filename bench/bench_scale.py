"""Scale benchmark (issue 2): a 100,000-job squeue output parsed and stored in SQLite in <= 5 s.

The output is generated in exactly the format the Slurm adapter asks for (``squeue_command()``:
``-O`` fields ending in the \\x1f separator, ``SLURM_TIME_FORMAT=%FT%T%z`` timestamps, the free-text
job name last), with a realistic mix: ~30 % running, pending jobs in submission bursts, Galaxy job
names ``g<id>_<tool>_<user>`` for half of them, a few GPU and multi-node jobs.

Each run times a steady-state collect tick: ``parse_squeue`` of the new output, then
``Store.write_snapshot`` replacing a previous 100k-job snapshot of the same destination (about 10 %
of the jobs finished meanwhile, so finished-job history is detected and written too). The first write
into an empty database is timed as well. Medians over ``--runs``.

    python bench/bench_scale.py [--jobs 100000] [--runs 3] [--check]

``--check`` exits 1 when the median parse + store total is above 5 s (timings are noisy on a busy
machine: the tests never assert wall times).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metasched.collect.adapters.slurm import SEP, SQUEUE_FIELDS, parse_squeue
from metasched.collect.types import Snapshot
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


def run_once(workdir: Path, jobs: int, seed: int) -> tuple[float, float, float, int]:
    """(first write s, parse s, replacing write s, history rows) for one fresh database."""
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
    return first, parse_s, store_s, result.finished


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check", action="store_true", help=f"exit 1 when parse + store exceeds {LIMIT_S} s")
    args = ap.parse_args()
    firsts, parses, stores, totals = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="metasched-bench-") as tmp:
        for i in range(args.runs):
            first, parse_s, store_s, finished = run_once(Path(tmp), args.jobs, seed=2 * i)
            firsts.append(first)
            parses.append(parse_s)
            stores.append(store_s)
            totals.append(parse_s + store_s)
            print(
                f"run {i + 1}: parse {parse_s:.2f} s, store {store_s:.2f} s (replacing; {finished} "
                f"finished jobs recorded), total {parse_s + store_s:.2f} s; first write into an empty "
                f"db {first:.2f} s",
                flush=True,
            )
    total = statistics.median(totals)
    print(f"jobs:            {args.jobs}")
    print(f"parse (median):  {statistics.median(parses):.2f} s")
    first = statistics.median(firsts)
    print(f"store (median):  {statistics.median(stores):.2f} s  (first write: {first:.2f} s)")
    print(f"total (median):  {total:.2f} s  -> {args.jobs / total:,.0f} jobs/s")
    ok = total <= LIMIT_S
    print(f"total <= {LIMIT_S:.0f} s:    {'yes' if ok else 'NO'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
