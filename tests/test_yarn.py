"""Hadoop YARN adapter, tested on documented-shape output only.

No Hadoop ResourceManager can be installed on this machine, so nothing here talks to a real cluster and
none of these tests is an integration test. The fixtures in tests/fixtures/yarn/ follow the JSON bodies
of the Hadoop 3.x "ResourceManager REST API's" documentation (``/ws/v1/cluster/metrics``, ``/nodes``,
``/apps``) field for field, with values for a cluster of two running NodeManagers, one UNHEALTHY (disk
full) and one LOST, two RUNNING and two ACCEPTED applications (``allocatedMB: -1`` as the RM reports
for apps without containers), and the RM's ``{"apps":null}`` for an empty list; apps_finished.json
adds FINISHED, KILLED and FAILED ones. The fetch path (curl on the head node over real SSH) runs against
a loopback HTTP stand-in serving those same bodies, filtering applications by ``states=`` as the RM does.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs

import pytest

from metasched.domain.errors import ParseError, TransportError
from metasched.domain.jobs import PENDING, RUNNING
from metasched.schedulers.registry import make_adapter
from metasched.schedulers.yarn import YarnAdapter, parse_apps, parse_metrics, parse_nodes
from metasched.settings import DestinationConfig, SSHSettings
from metasched.transport import open_transport
from tests.infra.sshd import SSHServer

FIXTURES = Path(__file__).parent / "fixtures" / "yarn"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_metrics_give_cluster_capacity() -> None:
    part = parse_metrics(fixture("metrics.json"))
    assert (part.name, part.cores_total, part.available, part.is_default) == ("cluster", 32, True, True)
    assert part.limits["totalMB"] == "131072"


def test_nodes_capacity_and_health() -> None:
    nodes = {n.name: n for n in parse_nodes(fixture("nodes.json"))}
    w1 = nodes["hadoop-w1.example.org"]
    assert (w1.available, w1.cores_total, w1.cores_alloc) == (True, 16, 12)
    assert (w1.mem_total_mb, w1.mem_alloc_mb) == (65536, 49152)
    unhealthy = nodes["hadoop-w3.example.org"]
    assert not unhealthy.available and unhealthy.state == "UNHEALTHY"
    assert "local-dirs usable space" in unhealthy.reason
    lost = nodes["hadoop-w4.example.org"]
    assert not lost.available and lost.reason == "LOST"
    assert sum(n.available for n in nodes.values()) == 2


def test_apps_running_and_pending() -> None:
    jobs = {j.job_id: j for j in parse_apps(fixture("apps.json"))}
    running = jobs["application_1795400000000_0117"]
    assert (running.state, running.cores, running.mem_mb) == (RUNNING, 12, 49152)
    assert running.name == "g5117_spark_wordcount_alice" and running.user == "galaxy"
    assert running.partition == "default" and running.nodes == "hadoop-w1.example.org"
    assert running.start_time == datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    pending = jobs["application_1795400000000_0119"]
    assert (pending.state, pending.raw_state, pending.cores, pending.mem_mb) == (PENDING, "ACCEPTED", 1, 0)
    assert pending.submit_time == datetime(2026, 11, 23, 18, 55, tzinfo=UTC) and pending.start_time is None
    assert "AM resource limit" in pending.reason and pending.nodes == ""
    assert sorted(j.state for j in jobs.values()) == [PENDING, PENDING, RUNNING, RUNNING]


def test_empty_app_list() -> None:
    assert parse_apps(fixture("apps_empty.json")) == []


@pytest.mark.parametrize(
    ("name", "endpoint"),
    [
        ("metrics.json", "/ws/v1/cluster/metrics"),
        ("nodes.json", "/ws/v1/cluster/nodes"),
        ("apps.json", "/apps"),
    ],
)
def test_truncated_bodies_are_parse_errors_naming_the_endpoint(name: str, endpoint: str) -> None:
    parse = {"metrics.json": parse_metrics, "nodes.json": parse_nodes, "apps.json": parse_apps}[name]
    text = fixture(name)
    with pytest.raises(ParseError, match=endpoint):
        parse(text[: len(text) // 2])


def test_wrong_shapes_are_parse_errors() -> None:
    with pytest.raises(ParseError, match="no 'clusterMetrics'"):
        parse_metrics(fixture("nodes.json"))
    with pytest.raises(ParseError, match="totalVirtualCores is not a number"):
        parse_metrics('{"clusterMetrics": {"activeNodes": 1, "totalNodes": 1, "totalVirtualCores": "8"}}')
    with pytest.raises(ParseError, match="app without id"):
        parse_apps('{"apps": {"app": [{"state": "RUNNING"}]}}')
    with pytest.raises(ParseError, match="not a list of objects"):
        parse_nodes('{"nodes": {"node": [1, 2]}}')


class CannedRunner:
    """Returns the fixture per URL and records argv: checks command construction only."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        self.calls.append(list(argv))
        url = argv[-1]
        for part, name in (("/metrics", "metrics.json"), ("/nodes", "nodes.json"), ("/apps", "apps.json")):
            if part in url:
                return fixture(name)
        raise AssertionError(url)


def test_adapter_fetches_with_curl_from_the_configured_rm() -> None:
    dest = DestinationConfig(
        id="hadoop",
        scheduler="yarn",
        host="local",
        ssh=SSHSettings(command_timeout=30),
        yarn_url="http://rm.internal:8088/",
    )
    adapter = make_adapter(dest)
    assert isinstance(adapter, YarnAdapter)
    runner = CannedRunner()
    snap = adapter.collect(runner)
    first = runner.calls[0]
    assert first[:4] == ["curl", "-fsS", "--max-time", "24"]
    assert first[-1] == "http://rm.internal:8088/ws/v1/cluster/metrics"
    assert runner.calls[2][-1].endswith(
        "/ws/v1/cluster/apps?states=RUNNING,ACCEPTED,SUBMITTED,NEW,NEW_SAVING"
    )
    (part,) = snap.partitions
    assert part.nodes_total == 4 and len(snap.nodes) == 4 and len(snap.jobs) == 4
    default = YarnAdapter(DestinationConfig(id="h", scheduler="yarn", host="local", ssh=SSHSettings()))
    assert default.base_url == "http://localhost:8088"


def all_apps(query: str) -> str:
    """The RM's application list: the live apps (apps.json) and finished ones (apps_finished.json), filtered
    by ``states=`` (comma-separated, any case) as the RM filters them; without it, every app."""
    apps = [
        *json.loads(fixture("apps.json"))["apps"]["app"],
        *json.loads(fixture("apps_finished.json"))["apps"]["app"],
    ]
    wanted = {s.strip().upper() for v in parse_qs(query).get("states", []) for s in v.split(",")}
    kept = [a for a in apps if not wanted or a["state"] in wanted]
    return json.dumps({"apps": {"app": kept} if kept else None})


class RMStandIn(ThreadingHTTPServer):
    """Loopback HTTP server with the RM's REST paths; records (path, Accept) of every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), DocumentedBodies)
        self.seen: list[tuple[str, str]] = []


class DocumentedBodies(BaseHTTPRequestHandler):
    """Serves the fixture bodies at the RM's REST paths; anything else is a 500 like a failing RM."""

    server: RMStandIn
    bodies: ClassVar[Mapping[str, str]] = {
        "/ws/v1/cluster/metrics": "metrics.json",
        "/ws/v1/cluster/nodes": "nodes.json",
        "/ws/v1/cluster/apps": "apps.json",
    }

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Accept", "")))
        path, _, query = self.path.partition("?")
        name = self.bodies.get(path)
        if name is None:
            self.send_error(500, "ResourceManager is not active")
            return
        body = (all_apps(query) if name == "apps.json" else fixture(name)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def rm_stand_in() -> Iterator[RMStandIn]:
    server = RMStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def url(server: RMStandIn) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_fetch_with_curl_over_ssh(sshd: SSHServer, rm_stand_in: RMStandIn) -> None:
    dest = sshd.destination("hadoop", "yarn", yarn_url=url(rm_stand_in))
    with open_transport(dest) as transport:
        snap = YarnAdapter(dest).collect(transport)
    assert len(snap.nodes) == 4 and len(snap.jobs) == 4
    assert [p for p, _ in rm_stand_in.seen] == [
        "/ws/v1/cluster/metrics",
        "/ws/v1/cluster/nodes",
        "/ws/v1/cluster/apps?states=RUNNING,ACCEPTED,SUBMITTED,NEW,NEW_SAVING",
    ]
    assert {accept for _, accept in rm_stand_in.seen} == {"application/json"}
    # the stand-in holds finished applications too: only the adapter's states= kept them out
    with urllib.request.urlopen(url(rm_stand_in) + "/ws/v1/cluster/apps", timeout=10) as answer:
        every = {a["id"]: a["state"] for a in json.load(answer)["apps"]["app"]}
    assert sorted(every.values()) == [
        "ACCEPTED",
        "ACCEPTED",
        "FAILED",
        "FINISHED",
        "KILLED",
        "RUNNING",
        "RUNNING",
    ]
    assert {j.job_id for j in snap.jobs} == {
        i for i, state in every.items() if state in ("RUNNING", "ACCEPTED")
    }


def test_http_error_from_the_rm_is_a_transport_error_naming_curl(
    sshd: SSHServer, rm_stand_in: RMStandIn
) -> None:
    dest = sshd.destination("hadoop", "yarn", yarn_url=url(rm_stand_in) + "/standby")
    with open_transport(dest) as transport, pytest.raises(TransportError, match=r"curl.*500"):
        YarnAdapter(dest).collect(transport)
