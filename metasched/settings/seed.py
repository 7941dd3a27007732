"""Seed 2's JSON cluster file: ``{"cluster": {"policy": {...}, "nodes": [...], "schedulers": [...]}}``.

Its nodes become ``node`` destinations, its schedulers destinations on their master node, and its
policy one ``PolicyConfig`` over the schedulers, so seed users keep their files unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

from msgspec.structs import replace

from metasched.settings.models import DestinationConfig, PolicyConfig, Section, SSHSettings
from metasched.settings.problems import KeyPath, Problem, describe, number
from metasched.settings.types import (
    POLICY_NAMES,
    Nice,
    NodeIndex,
    Percent,
    PolicyName,
    Port,
    SafeText,
    SchedulerIndex,
    SchedulerName,
    Text,
)
from metasched.settings.walker import Decoded

# Seed-2 scheduler names (case-insensitive) -> adapter names.
SEED2_SCHEDULERS: Mapping[str, str] = MappingProxyType(
    {
        "sge": "sge",
        "son of grid engine": "sge",
        "grid engine": "sge",
        "apache hadoop": "yarn",
        "hadoop": "yarn",
        "yarn": "yarn",
        "slurm": "slurm",
        "htcondor": "htcondor",
        "condor": "htcondor",
    }
)
SEED2_NAMES = "Apache Hadoop, HTCondor, Hadoop, SGE, Slurm, YARN"  # the spellings the seed's docs use
SEED2_SSH_USER = "metascheduler"  # the seed's --ssh-user default: its cluster files assume that login


class SeedNode(Section, frozen=True, kw_only=True):
    ip: SafeText
    port: Port | None = None  # None: the top-level ssh port


class SeedScheduler(Section, frozen=True, kw_only=True):
    name: Text  # a display name such as "Apache Hadoop"
    master: NodeIndex  # index into cluster.nodes
    weight: Percent | None = None


class SeedPolicy(Section, frozen=True, kw_only=True):
    name: Text  # free text: "Best Effort", "best-effort" and best_effort alike
    high_priority: SchedulerIndex | None = None  # index into cluster.schedulers
    enforce: bool = False
    nice: Nice = 10


class ClusterFile(Section, frozen=True, kw_only=True):
    policy: SeedPolicy | None = None
    nodes: tuple[SeedNode, ...]
    schedulers: tuple[SeedScheduler, ...]


def slug(name: str) -> str:
    """A scheduler's display name as a destination id: "Apache Hadoop" -> "apache_hadoop"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _policy_name(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


SeedResult = tuple[list[tuple[KeyPath, DestinationConfig]], tuple[KeyPath, PolicyConfig] | None]


def seed_cluster(
    d: Decoded[Any], cluster: ClusterFile, ssh: SSHSettings, problems: list[Problem]
) -> SeedResult:
    """The destinations (with the path of their id) and the policy of a decoded ``cluster:`` block."""
    p: KeyPath = ("cluster",)
    if ssh.user is None:
        ssh = replace(ssh, user=SEED2_SSH_USER)
    nodes: dict[int, tuple[str, int]] = {}  # index in the file -> (ip, port)
    for np_, node in d.items((*p, "nodes"), cluster.nodes):
        nodes[cast(int, np_[-1])] = (node.ip, node.port if node.port is not None else ssh.port)
    ip_counts: dict[str, int] = {}
    for ip, _ in nodes.values():
        ip_counts[ip] = ip_counts.get(ip, 0) + 1
    out: list[tuple[KeyPath, DestinationConfig]] = []
    for i, (ip, port) in nodes.items():
        node_id = f"node-{ip}-{port}" if ip_counts[ip] > 1 else f"node-{ip}"
        dest = DestinationConfig(id=node_id, scheduler="node", host=ip, ssh=replace(ssh, port=port))
        out.append(((*p, "nodes", i, "ip"), dest))
    node_ids = tuple(dest.id for _, dest in out)

    n_nodes = d.length((*p, "nodes"))
    sched_ids: list[str | None] = [None] * d.length((*p, "schedulers"))
    weights: dict[str, float] = {}
    for sp, sched in d.items((*p, "schedulers"), cluster.schedulers):
        scheduler = SEED2_SCHEDULERS.get(sched.name.strip().lower())
        if scheduler is None:
            problems.append(
                Problem((*sp, "name"), f"unknown scheduler {sched.name!r} (known: {SEED2_NAMES})")
            )
        dest_id = slug(sched.name)
        if not dest_id:
            problems.append(Problem((*sp, "name"), f"cannot make a destination id from {sched.name!r}"))
            continue
        master = nodes.get(sched.master)
        if not 0 <= sched.master < n_nodes:
            message = f"must be an index into cluster.nodes (0-{n_nodes - 1}), got {describe(sched.master)}"
            problems.append(Problem((*sp, "master"), message))
        sched_ids[cast(int, sp[-1])] = dest_id
        if sched.weight is not None:
            weights[dest_id] = sched.weight
        if scheduler is not None and master is not None:
            host, port = master
            dest = DestinationConfig(
                id=dest_id, scheduler=cast(SchedulerName, scheduler), host=host, ssh=replace(ssh, port=port)
            )
            out.append(((*sp, "name"), dest))
    if weights and not any(d.failed((*p, "schedulers", i, "weight")) for i in range(len(sched_ids))):
        total = sum(weights.values())
        if abs(total - 100) > 1e-6:
            message = f"weights must sum to 100, got {number(round(total, 6))}"
            problems.append(Problem((*p, "schedulers"), message, (*p, "schedulers"), late=True))
    if cluster.policy is None:
        return out, None
    return out, _seed_policy(cluster.policy, sched_ids, node_ids, weights, problems)


def _seed_policy(
    policy: SeedPolicy,
    sched_ids: list[str | None],
    node_ids: tuple[str, ...],
    weights: dict[str, float],
    problems: list[Problem],
) -> tuple[KeyPath, PolicyConfig] | None:
    """The policy needs every scheduler's id: its problems come after the schedulers'."""
    pp: KeyPath = ("cluster", "policy")
    name: str | None = _policy_name(policy.name)
    if name not in POLICY_NAMES:
        message = f"must be one of {', '.join(POLICY_NAMES)}, got {policy.name!r}"
        problems.append(Problem((*pp, "name"), message, ("cluster",), late=True))
        name = None
    hp = policy.high_priority
    high: str | None = None
    if hp is not None:
        if 0 <= hp < len(sched_ids):
            high = sched_ids[hp]
        else:
            message = f"must be an index into cluster.schedulers (0-{len(sched_ids) - 1}), got {describe(hp)}"
            problems.append(Problem((*pp, "high_priority"), message, ("cluster",), late=True))
    elif name == "best_effort":
        problems.append(
            Problem((*pp, "high_priority"), "is required for best_effort", ("cluster",), late=True)
        )
    if name is None:
        return None
    config = PolicyConfig(
        name=cast(PolicyName, name),
        destinations=tuple(s for s in sched_ids if s is not None),
        high_priority=high,
        weights=weights,
        enforce=policy.enforce,
        nice=policy.nice,
        nodes=node_ids,
    )
    return pp, config
