"""Slurm's job -> pid data for enforcement: ``squeue`` for running jobs and their nodes, ``scontrol
listpids JOB NODE`` on that node for the job's pids (``NODE`` names the slurmd when a host runs several).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from metasched.domain.ports import HostRunner, JobPids

SQUEUE_RUNNING = ("squeue", "-h", "-a", "-t", "RUNNING", "-o", "%A %N")


def parse_listpids(text: str) -> list[int]:
    """``scontrol listpids``: a header, then ``PID JOBID STEPID LOCALID GLOBALID`` rows."""
    pids = []
    for line in text.splitlines():
        first = line.split(None, 1)[0] if line.strip() else ""
        if first.isdigit():
            pids.append(int(first))
    return pids


def parse_squeue_running(text: str) -> list[tuple[str, str]]:
    """``squeue -h -t RUNNING -o '%A %N'``: (job id, node list expression)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((parts[0], parts[1]))
    return rows


@dataclass(frozen=True, slots=True)
class SlurmRunningJobs:
    """``RunningJobs`` of one Slurm destination."""

    jobs: Sequence[tuple[str, str]]
    env: Mapping[str, str]  # the destination's (SLURM_CONF, ...): also on a policy ``nodes`` host
    notes: Sequence[str] = ()

    def pids(self, runner: HostRunner, job: str, node: str) -> JobPids:
        pids = parse_listpids(runner.run(["scontrol", "listpids", job, node], env=self.env))
        return JobPids(tuple(pids), leaders=False)


def running_jobs(head: HostRunner, env: Mapping[str, str]) -> SlurmRunningJobs:
    """(job id, node name) of every running job, node lists expanded by Slurm itself."""
    out: list[tuple[str, str]] = []
    for job, expr in parse_squeue_running(head.run(SQUEUE_RUNNING)):
        names = [expr]
        if "[" in expr or "," in expr:
            names = head.run(["scontrol", "show", "hostnames", expr]).split()
        out.extend((job, n) for n in names)
    return SlurmRunningJobs(out, env)
