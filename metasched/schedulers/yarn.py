"""Hadoop YARN: the ResourceManager REST API, fetched with ``curl`` on the head node over the runner.

The RM web port is usually reachable only inside the cluster, so metasched asks the head node to fetch
``/ws/v1/cluster/{metrics,nodes,apps}`` (JSON) from ``dest.yarn_url`` (default http://localhost:8088).
Capacity is vcores and memory: a node's total is its used plus available resources; only RUNNING nodes
accept containers. ACCEPTED (and earlier) applications are pending demand, RUNNING ones are running.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from metasched.domain.errors import MetaschedError, ParseError
from metasched.domain.jobs import OTHER, PENDING, RUNNING, Job, Node, Partition, Snapshot
from metasched.domain.ports import HostRunner, JobPids, NodeRunners, Runner
from metasched.settings import DestinationConfig

DEFAULT_URL = "http://localhost:8088"
# yarn.nodemanager.local-dirs defaults to ${hadoop.tmp.dir}/nm-local-dir, hadoop.tmp.dir to
# /tmp/hadoop-${user.name}; the NodeManager runs as user yarn.
YARN_LOCAL_DIRS = ("/tmp/hadoop-yarn/nm-local-dir",)
RUNNING_APPS_PATH = "/ws/v1/cluster/apps?states=RUNNING"
METRICS_PATH = "/ws/v1/cluster/metrics"
NODES_PATH = "/ws/v1/cluster/nodes"
APPS_PATH = "/ws/v1/cluster/apps?states=RUNNING,ACCEPTED,SUBMITTED,NEW,NEW_SAVING"
PARTITION = "cluster"  # capacity is cluster-wide here; a job's own YARN queue is kept in Job.partition
APP_STATES = {
    "NEW": PENDING,
    "NEW_SAVING": PENDING,
    "SUBMITTED": PENDING,
    "ACCEPTED": PENDING,
    "RUNNING": RUNNING,
}


def _command(path: str) -> str:
    return f"curl {path}"


def _document(text: str, path: str, key: str) -> Any:
    """The JSON body's ``key`` member; ParseError naming the endpoint when the body is not that."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{_command(path)}: malformed JSON ({exc})") from None
    if not isinstance(body, dict) or key not in body:
        raise ParseError(f"{_command(path)}: response has no {key!r} object")
    return body[key]


def _items(text: str, path: str, key: str, item: str) -> list[dict[str, Any]]:
    """``{"apps": {"app": [...]}}``; the RM answers ``{"apps": null}`` when the list is empty."""
    wrapper = _document(text, path, key)
    if wrapper is None:
        return []
    if not isinstance(wrapper, dict):
        raise ParseError(f"{_command(path)}: {key!r} is not an object")
    items = wrapper.get(item, [])
    if isinstance(items, dict):  # some Jersey configurations unwrap single-element arrays
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ParseError(f"{_command(path)}: {key}.{item} is not a list of objects")
    return items


def _num(obj: Mapping[str, Any], key: str, path: str, required: bool = False) -> int:
    value = obj.get(key)
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParseError(f"{_command(path)}: {key} is not a number: {value!r}")
    return int(value)


def _ms(obj: Mapping[str, Any], key: str) -> datetime | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, UTC)


def parse_metrics(text: str) -> Partition:
    """``/ws/v1/cluster/metrics``: the cluster as one partition (vcores, node count)."""
    metrics = _document(text, METRICS_PATH, "clusterMetrics")
    if not isinstance(metrics, dict):
        raise ParseError(f"{_command(METRICS_PATH)}: 'clusterMetrics' is not an object")
    active = _num(metrics, "activeNodes", METRICS_PATH, required=True)
    return Partition(
        name=PARTITION,
        is_default=True,
        state="up" if active else "down",
        available=active > 0,
        nodes_total=_num(metrics, "totalNodes", METRICS_PATH, required=True),
        cores_total=_num(metrics, "totalVirtualCores", METRICS_PATH, required=True),
        limits={"totalMB": str(_num(metrics, "totalMB", METRICS_PATH))},
    )


def parse_nodes(text: str) -> list[Node]:
    """``/ws/v1/cluster/nodes``: NodeManagers; anything but RUNNING (NEW, UNHEALTHY, LOST,
    DECOMMISSIONED, REBOOTED, SHUTDOWN...) accepts no containers."""
    nodes: list[Node] = []
    for item in _items(text, NODES_PATH, "nodes", "node"):
        name = item.get("nodeHostName") or item.get("id")
        state = item.get("state")
        if not isinstance(name, str) or not isinstance(state, str):
            raise ParseError(f"{_command(NODES_PATH)}: node without nodeHostName/id or state")
        used_c = _num(item, "usedVirtualCores", NODES_PATH)
        used_m = _num(item, "usedMemoryMB", NODES_PATH)
        total_c = used_c + _num(item, "availableVirtualCores", NODES_PATH)
        total_m = used_m + _num(item, "availMemoryMB", NODES_PATH)
        available = state == "RUNNING"
        report = item.get("healthReport")
        reason = "" if available else (report if isinstance(report, str) and report else state)
        nodes.append(
            Node(
                name=name,
                state=state,
                available=available,
                cores_total=total_c,
                cores_alloc=used_c,
                mem_total_mb=total_m,
                mem_alloc_mb=used_m,
                partitions=(PARTITION,),
                reason=reason,
            )
        )
    return nodes


def parse_apps(text: str) -> list[Job]:
    """``/ws/v1/cluster/apps?states=...``: one Job per application (containers are not listed)."""
    jobs: list[Job] = []
    for app in _items(text, APPS_PATH, "apps", "app"):
        app_id, raw = app.get("id"), app.get("state")
        if not isinstance(app_id, str) or not isinstance(raw, str):
            raise ParseError(f"{_command(APPS_PATH)}: app without id or state")
        state = APP_STATES.get(raw, OTHER)
        am_host = app.get("amHostHttpAddress")
        diagnostics = app.get("diagnostics")
        jobs.append(
            Job(
                job_id=app_id,
                state=state,
                partition=str(app.get("queue") or ""),
                name=str(app.get("name") or ""),
                user=str(app.get("user") or ""),
                raw_state=raw,
                reason=diagnostics if state == PENDING and isinstance(diagnostics, str) else "",
                cores=max(_num(app, "allocatedVCores", APPS_PATH), 1),  # -1 while nothing is allocated
                mem_mb=max(_num(app, "allocatedMB", APPS_PATH), 0),
                # RM startedTime: submission accepted; launchTime (Hadoop 3): the AM container started.
                submit_time=_ms(app, "startedTime"),
                start_time=(_ms(app, "launchTime") or _ms(app, "startedTime")) if state == RUNNING else None,
                nodes=am_host.rpartition(":")[0] if isinstance(am_host, str) and state == RUNNING else "",
            )
        )
    return jobs


_APP_ID = re.compile(r"application_\d+_\d+")
_CONTAINER_ID = re.compile(r"container_(?:e\d+_)?\d+_\d+_\d+_\d+")


def parse_container_pids(text: str) -> dict[str, list[int]]:
    """``awk`` over ``<local-dir>/nmPrivate/<app>/<container>/<container>.pid``: app id -> container pids.

    Lines are ``PATH:PID``; a path not shaped like the NodeManager's own (the container directory and
    file named by the same container id of that application), or an empty pid file the NM has not
    finished writing, is ignored.
    """
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        path, sep, pid = line.rpartition(":")
        parts = path.split("/")
        if not sep or not pid.strip().isdigit() or len(parts) < 4 or parts[-4] != "nmPrivate":
            continue
        app, container, name = parts[-3], parts[-2], parts[-1]
        if not (_APP_ID.fullmatch(app) and _CONTAINER_ID.fullmatch(container) and name == f"{container}.pid"):
            continue
        if container.split("_")[-4:-2] != app.split("_")[1:]:  # the container of another application
            continue
        out.setdefault(app, []).append(int(pid))
    return out


@dataclass(frozen=True, slots=True)
class YarnRunningJobs:
    """``RunningJobs`` of one YARN cluster: container launch-shell pids listed per NodeManager host."""

    jobs: Sequence[tuple[str, str]]
    listings: Mapping[str, Mapping[str, list[int]]]  # runner label -> app id -> container pids
    notes: Sequence[str] = ()

    def pids(self, runner: HostRunner, job: str, node: str) -> JobPids:
        return JobPids(tuple(self.listings.get(runner.label, {}).get(job, [])), leaders=True)


class YarnAdapter:
    """Fetches the RM REST endpoints with curl on the head node (no extra software on the cluster)."""

    def __init__(self, dest: DestinationConfig) -> None:
        self.dest = dest
        self.base_url = (dest.yarn_url or DEFAULT_URL).rstrip("/")

    def _fetch(self, runner: Runner, path: str) -> str:
        # curl gives up before the transport's command timeout, so its own error message is reported.
        max_time = max(1, math.floor(self.dest.ssh.command_timeout * 0.8))
        argv = ["curl", "-fsS", "--max-time", str(max_time), "-H", "Accept: application/json"]
        return runner.run([*argv, self.base_url + path])

    def collect(self, runner: Runner) -> Snapshot:
        partition = parse_metrics(self._fetch(runner, METRICS_PATH))
        nodes = parse_nodes(self._fetch(runner, NODES_PATH))
        jobs = parse_apps(self._fetch(runner, APPS_PATH))
        # Metrics count only active NodeManagers; the partition lists every node the RM knows.
        return Snapshot(nodes=nodes, partitions=[replace(partition, nodes_total=len(nodes))], jobs=jobs)

    def _pid_files(self, runner: HostRunner) -> dict[str, list[int]]:
        """The NodeManager's container pid files on this host: app id -> container launch-shell pids.

        ``<yarn.nodemanager.local-dirs>/nmPrivate/<app>/<container>/<container>.pid``, written by the NM
        itself; each pid is the container's launch shell, started with ``setsid``.
        """
        dirs = [f"{d.rstrip('/')}/nmPrivate" for d in (self.dest.yarn_local_dirs or YARN_LOCAL_DIRS)]
        argv = ["find", *dirs, "-mindepth", "3", "-maxdepth", "3", "-type", "f", "-name", "container_*.pid"]
        argv += ["-exec", "awk", '{ print FILENAME ":" $0 }', "{}", "+"]
        return parse_container_pids(runner.run(argv))

    def running_jobs(self, head: HostRunner, nodes: NodeRunners) -> YarnRunningJobs:
        """Enforcement's ``JobProcesses``: (application, NodeManager host) for every RUNNING application
        with a container pid file there; a NodeManager whose files cannot be listed becomes a note."""
        apps = {j.job_id for j in parse_apps(self._fetch(head, RUNNING_APPS_PATH))}
        names = [n.name for n in parse_nodes(self._fetch(head, NODES_PATH)) if n.available]
        listings: dict[str, dict[str, list[int]]] = {}
        notes: list[str] = []
        out: list[tuple[str, str]] = []
        for node in names:
            try:
                runner = nodes.for_node(node)
                if runner.label in listings:  # several NodeManagers reached on one host: listed once
                    continue
                listings[runner.label] = listing = self._pid_files(runner)
            except MetaschedError as exc:
                notes.append(f"{self.dest.id} on {node}: container pids unknown: {exc}")
                continue
            out.extend((app, node) for app in sorted(listing) if app in apps)
        return YarnRunningJobs(out, listings, notes)
