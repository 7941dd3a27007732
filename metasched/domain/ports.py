"""The seams of a collect and of enforcement: a transport runs commands, an adapter knows one scheduler.

Enforcement asks an adapter for job -> pid data only through ``JobProcesses``, an optional adapter
capability; the application layer hands enforcement the adapter and a way to open ``HostRunner``s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from metasched.domain.jobs import Snapshot


class Runner(Protocol):
    """Runs one command on a destination's host. Implemented by the SSH and local transports.

    ``argv`` is quoted by the transport (never joined by callers); ``env`` is added to the
    command's environment. Raises TransportError on connect failure, timeout or non-zero exit.
    """

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str: ...


class HostRunner(Runner, Protocol):
    """A Runner on one open connection, named in messages (``host:port`` or ``local``)."""

    @property
    def label(self) -> str: ...

    def close(self) -> None: ...


class Adapter(Protocol):
    """One per scheduler: which commands to run, and pure parsers of their output."""

    def collect(self, runner: Runner) -> Snapshot: ...


class NodeRunners(Protocol):
    """Runners for a cluster's nodes, opened on demand by enforcement and reused for its whole run."""

    def for_node(self, node: str) -> HostRunner: ...


@dataclass(frozen=True, slots=True)
class JobPids:
    """One job's processes on one node as its scheduler knows them.

    ``leaders``: each pid leads the job, so its process group (when it leads one) and every descendant
    belong to the job too; otherwise the pids are the job's processes exactly.
    """

    pids: tuple[int, ...]
    leaders: bool


class RunningJobs(Protocol):
    """What one discovery learnt: the running jobs and, per job, where to find its pids."""

    @property
    def jobs(self) -> Sequence[tuple[str, str]]:
        """(job id, node name) of every running job, one row per node it runs on."""
        ...

    @property
    def notes(self) -> Sequence[str]:
        """What could not be learnt (a node whose listing failed), for the operator."""
        ...

    def pids(self, runner: HostRunner, job: str, node: str) -> JobPids:
        """``job``'s pids on ``node``, asked over ``runner`` (that node's host). Raises MetaschedError."""
        ...


@runtime_checkable
class JobProcesses(Protocol):
    """Optional adapter capability for enforcement: running jobs and their pids from the scheduler's own
    job -> pid data (never from matching process names)."""

    def running_jobs(self, head: HostRunner, nodes: NodeRunners) -> RunningJobs:
        """Discover over ``head`` (the scheduler destination's host). Raises MetaschedError."""
        ...
