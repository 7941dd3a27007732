"""Slurm: ``squeue``, ``sinfo -N`` and ``scontrol show partition``, parsed into the plain collect types.

Why the commands look the way they do:

- Explicit ``-O`` formats (with ``--noconvert``: no "2G"/"1K" rounding), run through ``env -u ...``:
  SQUEUE_FORMAT/SINFO_FORMAT are overridden by ``-O``, but other user environment (SQUEUE_ARRAY,
  SQUEUE_USERS, SQUEUE_STATES, SINFO_PARTITION, ... from a head node's ``.bashrc``) silently changes
  *which* rows come back, so those are unset.
  ``SLURM_TIME_FORMAT=%FT%T%z`` makes every timestamp carry its UTC offset (Slurm otherwise prints the
  head node's local time without a zone, or "relative" text if the user asked for it);
  ``SLURM_BITSTR_LEN=0`` stops Slurm from shortening long array index expressions with "...".
- Field separator ``\\x1f`` (ASCII unit separator) after *every* field, so a complete line ends with it:
  a line cut short is detected (ParseError). The only free-text field (job name, node reason) comes
  last, so a name containing the separator (or ``|``, spaces) is still recovered whole.

Units and conventions (see ``domain.jobs``):

- Job memory is the job's total: ``mem=`` of ``tres-alloc`` (allocated when running, requested when
  pending, already multiplied out for --mem-per-cpu); ``MinMemory`` x nodes only when that is missing.
  Suffixes K/M/G/T/P are converted to MB; a bare number is MB.
- GPUs: ``gres/gpu`` from tres-alloc when accounting tracks it, else tres-per-job, else tres-per-node x
  nodes, else tres-per-task x tasks. 22.05 prints ``gres:gpu:2``; newer releases ``gres/gpu:a100=2``;
  both are read.
- A pending array range such as ``123_[4-10%2]`` is expanded into one pending job per task
  (``123_4`` ... ``123_10``), so it counts as N jobs of demand and each task keeps the id it will have
  when it runs. At most ``slurm_values.ARRAY_EXPAND_LIMIT`` tasks per range are expanded; an
  expression Slurm cut short (ends in "...") counts as one job with the printed id.
- Pending jobs waiting on something other than resources or priority (dependency, hold, begin time,
  reservation, invalid account/QOS) are HELD, not demand. Start time is kept only for jobs that started.
- A PENDING job's StartTime is Slurm's expected start (set by the backfill scheduler, and by the main
  one for the job at the head of a partition): kept as ``start_estimate``, with ``LastSchedEval`` (the
  last time the scheduler evaluated the job, i.e. when the estimate was last recomputed) as
  ``estimated_at``. ``N/A``/``Unknown`` (no estimate: e.g. the jobs ahead have no time limit) is None.
  A held job's StartTime (its --begin time) is no estimate of capacity and is dropped.
- Node availability: down, drained/draining, fail/failing, maint, unknown, not responding, powered
  off/powering down, pending reboot and invalid registration all count as unavailable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from metasched.domain.errors import ParseError
from metasched.domain.jobs import OTHER, PENDING, RUNNING, Job, Node, Partition, Snapshot
from metasched.domain.ports import HostRunner, NodeRunners, Runner
from metasched.schedulers import slurm_pids
from metasched.schedulers.slurm_values import (
    MISSING,
    expand_array_indices,
    gpu_count,
    job_state,
    mem_mb,
    node_available,
    parse_time,
    tres_value,
)
from metasched.settings import DestinationConfig

SEP = "\x1f"

# User environment that changes which rows or how they are printed (the explicit -O wins over *_FORMAT
# anyway, they are unset too so nothing depends on that precedence).
_UNSET_ENV = (
    "SQUEUE_ACCOUNT",
    "SQUEUE_ALL",
    "SQUEUE_ARRAY",
    "SQUEUE_ARRAY_UNIQUE",
    "SQUEUE_FEDERATION",
    "SQUEUE_FORMAT",
    "SQUEUE_FORMAT2",
    "SQUEUE_LICENSES",
    "SQUEUE_LOCAL",
    "SQUEUE_NAMES",
    "SQUEUE_PARTITION",
    "SQUEUE_PRIORITY",
    "SQUEUE_QOS",
    "SQUEUE_SIBLING",
    "SQUEUE_SORT",
    "SQUEUE_STATES",
    "SQUEUE_USERS",
    "SINFO_ALL",
    "SINFO_FEDERATION",
    "SINFO_FORMAT",
    "SINFO_LOCAL",
    "SINFO_PARTITION",
    "SINFO_SORT",
    "SCONTROL_ALL",
    "SCONTROL_FEDERATION",
    "SCONTROL_LOCAL",
    "SCONTROL_SIBLING",
)
_SET_ENV = ("SLURM_TIME_FORMAT=%FT%T%z", "SLURM_BITSTR_LEN=0")

SQUEUE_FIELDS = (
    "JobArrayID",
    "Partition",
    "UserName",
    "State",
    "Reason",
    "NumCPUs",
    "NumNodes",
    "NumTasks",
    "MinMemory",
    "tres-alloc",
    "tres-per-job",
    "tres-per-node",
    "tres-per-task",
    "SubmitTime",
    "StartTime",
    "LastSchedEval",
    "NodeList",
    "Name",  # free text: last
)
SINFO_FIELDS = (
    "NodeList",
    "PartitionName",
    "StateLong",
    "StateComplete",
    "CPUsState",
    "Memory",
    "AllocMem",
    "FreeMem",
    "CPUsLoad",
    "Gres",
    "GresUsed",
    "Reason",  # free text: last
)


_COUNT_RE = re.compile(r"(\d+(?:\.\d+)?)([KM]?)\Z", re.IGNORECASE)
_COUNT_UNITS = {"": 1, "K": 1024, "M": 1024**2}
_ARRAY_RE = re.compile(r"(\d+)_\[(.*)\]\Z")


def _command(name: str, *args: str) -> list[str]:
    unset = [a for var in _UNSET_ENV for a in ("-u", var)]
    return ["env", *unset, *_SET_ENV, name, *args]


def _format(fields: Sequence[str]) -> str:
    return ",".join(f"{f}:0{SEP}" for f in fields)


def squeue_command() -> list[str]:
    """All jobs of all users in all partitions (``-a``: hidden ones too), array ranges compact."""
    return _command("squeue", "-h", "-a", "--noconvert", "-O", _format(SQUEUE_FIELDS))


def sinfo_command() -> list[str]:
    """One line per node and partition (a node in two partitions comes twice; parse_sinfo merges)."""
    return _command("sinfo", "-h", "-N", "-a", "--noconvert", "-O", _format(SINFO_FIELDS))


def partitions_command() -> list[str]:
    return _command("scontrol", "-a", "-o", "show", "partition")


class SlurmAdapter:
    """Three commands per collect; everything else is pure parsing."""

    def __init__(self, dest: DestinationConfig) -> None:
        self.dest = dest

    def collect(self, runner: Runner) -> Snapshot:
        partitions = parse_partitions(runner.run(partitions_command()))
        nodes = parse_sinfo(runner.run(sinfo_command()))
        jobs = parse_squeue(runner.run(squeue_command()))
        return Snapshot(nodes=nodes, partitions=partitions, jobs=jobs)

    def running_jobs(self, head: HostRunner, nodes: NodeRunners) -> slurm_pids.SlurmRunningJobs:
        """Enforcement's ``JobProcesses``: see ``slurm_pids``."""
        return slurm_pids.running_jobs(head, self.dest.env)


# --- line splitting --------------------------------------------------------------------------------


def _split(line: str, nfields: int, command: str, lineno: int) -> list[str]:
    """Fields of one ``-O`` line; each field ends in SEP, the last (free text) may contain SEP itself."""
    if not line.endswith(SEP):
        raise ParseError(f"{command}: line {lineno}: incomplete line (no final separator): {line[:120]!r}")
    parts = line[:-1].split(SEP, nfields - 1)
    if len(parts) != nfields:
        raise ParseError(
            f"{command}: line {lineno}: expected {nfields} fields, got {len(parts)}: {line[:120]!r}"
        )
    return parts  # -O with size 0 pads nothing: fields are exact


def _int(text: str, command: str, lineno: int, what: str) -> int:
    """A count; ``--noconvert`` keeps Slurm from printing 2048 CPUs as "2K", but older clients may."""
    m = _COUNT_RE.match(text.strip())
    if m is None:
        raise ParseError(f"{command}: line {lineno}: {what} is not a number: {text!r}")
    return round(float(m.group(1)) * _COUNT_UNITS[m.group(2).upper()])


def _lines(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


# --- squeue ----------------------------------------------------------------------------------------


def parse_squeue(text: str) -> list[Job]:
    """Output of ``squeue_command()`` -> jobs (pending array ranges expanded, see module docstring).

    Written for big queues (100k lines): fields unpacked positionally, and values that repeat across
    jobs (timestamps of a submission burst, identical resource requests) parsed once per call.
    """
    jobs: list[Job] = []
    nf = len(SQUEUE_FIELDS)
    times: dict[str, datetime | None] = {}
    resources: dict[tuple[str, ...], tuple[int, int]] = {}
    for n, line in _lines(text):
        (
            job_id, partition, user, raw_state, reason, cpus, nodes_n, tasks_n, min_mem,
            tres, per_job, per_node, per_task, submit_text, start_text, eval_text, nodelist, name,
        ) = _split(line, nf, "squeue", n)  # fmt: skip
        if reason in ("None", "(null)"):
            reason = ""
        state = job_state(raw_state, reason)
        cores = int(cpus) if cpus.isdigit() else _int(cpus, "squeue", n, "NumCPUs")
        key = (tres, per_job, per_node, per_task, min_mem, nodes_n, tasks_n)
        res = resources.get(key)
        if res is None:
            res = resources[key] = _job_resources(key, f"squeue: line {n}")
        if submit_text not in times:
            times[submit_text] = parse_time(submit_text, f"squeue: line {n}")
        submit = times[submit_text]
        start = estimate = evaluated = None
        if state in (RUNNING, OTHER):
            if start_text not in times:
                times[start_text] = parse_time(start_text, f"squeue: line {n}")
            start = times[start_text]
        elif state == PENDING:
            if start_text not in times:
                times[start_text] = parse_time(start_text, f"squeue: line {n}")
            estimate = times[start_text]
            if estimate is not None:
                if eval_text not in times:
                    times[eval_text] = parse_time(eval_text, f"squeue: line {n}")
                evaluated = times[eval_text]
        base = Job(
            job_id=job_id,
            state=state,
            partition=partition,
            name=name,
            user=user,
            raw_state=raw_state,
            reason=reason,
            cores=cores,
            mem_mb=res[0],
            gpus=res[1],
            submit_time=submit,
            start_time=start,
            nodes=nodelist,
            start_estimate=estimate,
            estimated_at=evaluated,
        )
        m = _ARRAY_RE.match(job_id) if job_id.endswith("]") else None
        indices = expand_array_indices(m.group(2)) if m else None
        if m is None or indices is None:
            jobs.append(base)
            continue
        for i in indices:
            jobs.append(replace(base, job_id=f"{m.group(1)}_{i}"))
    return jobs


def _job_resources(key: tuple[str, ...], where: str) -> tuple[int, int]:
    """(total memory MB, GPUs) of one job from its TRES/gres fields (see module docstring)."""
    tres, per_job, per_node, per_task, min_mem, nodes_n, tasks_n = key
    nnodes = int(nodes_n) if nodes_n.isdigit() else 1
    ntasks = int(tasks_n) if tasks_n.isdigit() else 1
    mem_text = tres_value(tres, "mem")
    mem = mem_mb(mem_text, where) if mem_text is not None else mem_mb(min_mem, where) * nnodes
    gpus_text = tres_value(tres, "gres/gpu")
    if gpus_text is not None and gpus_text.isdigit():
        return mem, int(gpus_text)
    gpus = gpu_count(per_job) or gpu_count(per_node) * nnodes or gpu_count(per_task) * ntasks
    return mem, gpus


# --- sinfo -----------------------------------------------------------------------------------------


def parse_sinfo(text: str) -> list[Node]:
    """Output of ``sinfo_command()`` -> one Node per node name, partitions merged in output order."""
    nodes: dict[str, Node] = {}
    parts: dict[str, list[str]] = {}
    nf = len(SINFO_FIELDS)
    for n, line in _lines(text):
        f = dict(zip(SINFO_FIELDS, _split(line, nf, "sinfo", n), strict=True))
        name = f["NodeList"]
        part = f["PartitionName"].rstrip("*")
        if name in nodes:
            if part and part not in parts[name]:
                parts[name].append(part)
            continue
        cpu_state = f["CPUsState"].split("/")
        if len(cpu_state) != 4:
            raise ParseError(f"sinfo: line {n}: CPUsState is not A/I/O/T: {f['CPUsState']!r}")
        alloc, _idle, _other, total = (_int(x, "sinfo", n, "CPUsState") for x in cpu_state)
        where = f"sinfo: line {n}"
        free = None if f["FreeMem"] in MISSING else mem_mb(f["FreeMem"], where)
        load = None if f["CPUsLoad"] in MISSING else _float(f["CPUsLoad"], n)
        reason = f["Reason"].strip()
        nodes[name] = Node(
            name=name,
            state=f["StateLong"],
            available=node_available(f["StateLong"], f["StateComplete"]),
            cores_total=total,
            cores_alloc=alloc,
            mem_total_mb=mem_mb(f["Memory"], where),
            mem_alloc_mb=mem_mb(f["AllocMem"], where),
            mem_free_mb=free,
            gpus_total=gpu_count(f["Gres"]),
            gpus_alloc=gpu_count(f["GresUsed"]),
            load_1=load,
            reason="" if reason == "none" else reason,
        )
        parts[name] = [part] if part else []
    return [replace(node, partitions=tuple(parts[name])) for name, node in nodes.items()]


def _float(text: str, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise ParseError(f"sinfo: line {lineno}: CPUsLoad is not a number: {text!r}") from None


# --- scontrol show partition -------------------------------------------------------------------------

# Kept verbatim in Partition.limits (Slurm's own spelling, e.g. MaxTime=2-00:00:00, MaxMemPerNode=UNLIMITED).
PARTITION_LIMIT_KEYS = (
    "MaxTime",
    "DefaultTime",
    "MaxNodes",
    "MinNodes",
    "MaxCPUsPerNode",
    "MaxMemPerNode",
    "MaxMemPerCPU",
    "DefMemPerNode",
    "DefMemPerCPU",
    "PriorityTier",
    "OverSubscribe",
    "AllowGroups",
    "AllowAccounts",
    "AllowQos",
    "QoS",
    "Hidden",
    "RootOnly",
    "Nodes",
)
_PARTITION_REQUIRED = ("PartitionName", "State", "TotalCPUs", "TotalNodes")


def parse_partitions(text: str) -> list[Partition]:
    """Output of ``scontrol -a -o show partition`` (one ``Key=Value ...`` line per partition)."""
    if text.strip() == "No partitions in the system":
        return []
    out: list[Partition] = []
    for n, line in _lines(text):
        kv: dict[str, str] = {}
        for token in line.split():
            key, eq, value = token.partition("=")
            if not eq or not key:
                raise ParseError(f"scontrol show partition: line {n}: not Key=Value: {token[:60]!r}")
            kv[key] = value
        missing = [k for k in _PARTITION_REQUIRED if k not in kv]
        if missing:
            raise ParseError(
                f"scontrol show partition: line {n}: missing {', '.join(missing)} (truncated output?)"
            )
        state = kv["State"].upper()
        out.append(
            Partition(
                name=kv["PartitionName"],
                is_default=kv.get("Default", "NO").upper() == "YES",
                state=state.lower(),
                available=state == "UP",
                nodes_total=_int(kv["TotalNodes"], "scontrol show partition", n, "TotalNodes"),
                cores_total=_int(kv["TotalCPUs"], "scontrol show partition", n, "TotalCPUs"),
                limits={k: kv[k] for k in PARTITION_LIMIT_KEYS if k in kv},
            )
        )
    return out
