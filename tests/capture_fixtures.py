"""Re-capture the committed scheduler output fixtures from real daemons on this machine.

    python -m tests.capture_fixtures

Starts the same Slurm test cluster as the ``slurm`` fixture, runs the adapters' own commands (through
``LocalTransport``, exactly as ``host: local`` collects) in several cluster states, and writes:

- tests/fixtures/slurm/{squeue,sinfo,partitions}.txt: the standard ``populate`` job mix
- tests/fixtures/slurm/squeue_more.txt: plus admin hold, begin time, --mem-per-cpu, --gpus, --gres,
  --gpus-per-task, a name with the field separator in it and a 200-character name
- tests/fixtures/slurm/sinfo_draining.txt: n2 drained while it runs jobs
- tests/fixtures/slurm/sinfo_drained.txt, partitions_down.txt, squeue_empty.txt: after scancel,
  n1 and n2 drained, partition ``long`` set DOWN
- tests/fixtures/slurm/squeue_backfill.txt: a second cluster with the backfill scheduler running every
  second, both nodes filled with time-limited jobs (``fill_for_backfill``): pending jobs with
  Slurm's expected start
- tests/fixtures/node/probe.txt: the node adapter's probe of this machine

    python -m tests.capture_fixtures slurm    # only the Slurm files (or: node)

The tests read these files; re-run this after changing a command in an adapter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from metasched.schedulers import node, slurm
from metasched.settings import DestinationConfig, SSHSettings
from metasched.transport.local import LocalTransport
from tests.infra.slurm import (
    BACKFILL_PARAMS,
    SlurmCluster,
    fill_for_backfill,
    populate,
    start_slurm,
    stop_slurm,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path} ({len(text.splitlines())} lines)")


def _more_jobs(c: SlurmCluster) -> None:
    held = c.sbatch("admin_held", cpus=1)
    c.run(["scontrol", "hold", held])
    c.sbatch("later", cpus=1, extra=["--begin=now+1hour"])
    c.sbatch("per_cpu_mem", cpus=2, extra=["--mem-per-cpu=300"])
    c.sbatch("gpus_per_job", cpus=1, partition="long", extra=["--gpus=2"])
    c.sbatch("gres_per_node", cpus=1, partition="long", extra=["--gres=gpu:2", "--mem=100"])
    c.sbatch("gpus_per_task", cpus=1, partition="long", extra=["-n", "2", "--gpus-per-task=1", "--mem=100"])
    c.sbatch(f"sep{slurm.SEP}in name | x", cpus=4, mem="10M")
    c.sbatch("long_" + "x" * 195, cpus=4, mem="10M")


def capture_slurm() -> None:
    c = start_slurm()
    try:
        dest = DestinationConfig(id="capture", scheduler="slurm", host="local", ssh=SSHSettings(), env=c.env)
        run = LocalTransport(dest).run
        # An empty queue first (the daemons are up, nothing submitted).
        _write(FIXTURES / "slurm/squeue_empty.txt", run(slurm.squeue_command()))
        populate(c)
        time.sleep(2)  # let the scheduler settle reasons/estimates as a busy cluster would show them
        _write(FIXTURES / "slurm/squeue.txt", run(slurm.squeue_command()))
        _write(FIXTURES / "slurm/sinfo.txt", run(slurm.sinfo_command()))
        _write(FIXTURES / "slurm/partitions.txt", run(slurm.partitions_command()))
        _more_jobs(c)
        time.sleep(2)
        _write(FIXTURES / "slurm/squeue_more.txt", run(slurm.squeue_command()))
        c.run(["scontrol", "update", "nodename=n2", "state=drain", "reason=disk | full, replace x=1"])
        _write(FIXTURES / "slurm/sinfo_draining.txt", run(slurm.sinfo_command()))
        c.cancel_all()
        c.run(["scontrol", "update", "nodename=n1", "state=drain", "reason=maintenance"])
        c.run(["scontrol", "update", "partitionname=long", "state=down"])
        time.sleep(1)
        _write(FIXTURES / "slurm/sinfo_drained.txt", run(slurm.sinfo_command()))
        _write(FIXTURES / "slurm/partitions_down.txt", run(slurm.partitions_command()))
    finally:
        stop_slurm(c)
    c = start_slurm(sched_params=BACKFILL_PARAMS)
    try:
        dest = DestinationConfig(id="capture", scheduler="slurm", host="local", ssh=SSHSettings(), env=c.env)
        fill_for_backfill(c)
        _write(FIXTURES / "slurm/squeue_backfill.txt", LocalTransport(dest).run(slurm.squeue_command()))
    finally:
        stop_slurm(c)


def capture_node() -> None:
    local = DestinationConfig(id="node", scheduler="node", host="local", ssh=SSHSettings())
    _write(FIXTURES / "node/probe.txt", LocalTransport(local).run(node.node_command()))


def main(parts: list[str]) -> None:
    known = {"slurm": capture_slurm, "node": capture_node}
    unknown = [p for p in parts if p not in known]
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)} (known: {', '.join(known)})")
    for part in parts or list(known):
        known[part]()


if __name__ == "__main__":
    main(sys.argv[1:])
