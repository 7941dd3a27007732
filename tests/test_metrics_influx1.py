"""Metrics pulled from a REAL InfluxDB 1.6.7 (``influxdb``, ``influxdb_auth``, ``influxdb_tls``) into a store.

Points are written in the exact line protocol produced in the field (tests/fixtures/influx/field.lp) with
explicit timestamps around a fixed ``NOW``; every pull passes that ``NOW``, so the time windows are
deterministic and do not depend on the wall clock.
"""

from __future__ import annotations

import http.server
import ssl
import threading
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from metasched.app.metrics import pull_metrics, write_summary
from metasched.domain.destination import DestinationSummary, MetricRow
from metasched.domain.jobs import PENDING, RUNNING, Job, Node, Snapshot
from metasched.metrics import fetch_metrics
from metasched.metrics.influx1 import Influx1Client, InfluxError, quote_ident, ssl_context
from metasched.metrics.measurements import escape_key
from metasched.settings import Config, DestinationConfig, InfluxSettings, SSHSettings, load_config
from metasched.settings.measurements import DEFAULT_SPECS, escape_measurement
from metasched.store import Store
from tests.infra.influx import InfluxServer
from tests.infra.procs import free_port

FIELD_LP = Path(__file__).parent / "fixtures" / "influx" / "field.lp"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
T = int(NOW.timestamp())
BWAMETH = "toolshed.g2.bx.psu.edu/repos/iuc/bwameth/bwameth/0.2.7+galaxy0"

HOSTILE_IDS = [
    'dq"uote',
    "sq'uote",
    "semi;colon",
    "back\\slash",
    "x' OR '1'='1",
    '" OR 1=1 --',
    "OR 1=1",
    "sp ace,comma=eq",
    "$since",
]


def dest(dest_id: str, **kw: Any) -> DestinationConfig:
    return DestinationConfig(id=dest_id, scheduler="htcondor", host="local", ssh=SSHSettings(), **kw)


DESTS = (
    dest("pulsar_de02"),
    dest("slurm_main", runner="slurm"),
    dest("pulsar_fr", vhost="pulsar_fr01"),
    dest("pulsar_be", vhost="pulsar_be01"),
    dest("pulsar_it", vhost="pulsar_it01"),
)


def config(settings: InfluxSettings, destinations: tuple[DestinationConfig, ...] = DESTS) -> Config:
    return Config(path=None, database=None, ssh=SSHSettings(), destinations=destinations, influxdb=settings)


def field_lines() -> list[str]:
    return [ln for ln in FIELD_LP.read_text().splitlines() if ln and not ln.startswith("#")]


def values(rows: list[MetricRow]) -> dict[tuple[str, str, str], float | str | None]:
    return {(r.destination_id, r.tool_id, r.name): r.text if r.text is not None else r.value for r in rows}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "state.db"))


@pytest.fixture(scope="module")
def field_db(influxdb: InfluxServer) -> InfluxServer:
    db = influxdb.fresh()
    db.write(field_lines())
    return db


def test_queue_by_destination_windowed_batch_and_not_swapped(field_db: InfluxServer) -> None:
    got = fetch_metrics(config(field_db.settings()), NOW)
    assert got.warnings == []
    q = values(got.rows["queue_by_destination"])
    assert q[("pulsar_de02", "", "queued")] == 7
    assert q[("pulsar_de02", "", "running")] == 3
    # gxadmin's "slurm" maps to the TPV id via runner; its queue drained after an older batch -> 0.
    assert q[("slurm_main", "", "running")] == 12
    assert q[("slurm_main", "", "queued")] == 0
    # Unknown names stay under their own id; configured destinations without points read 0.
    assert q[("pulsar_unmapped", "", "queued")] == 2
    assert q[("pulsar_unmapped", "", "running")] == 0
    assert q[("pulsar_it", "", "queued")] == 0
    # Older than the window.
    assert not any(k[0] == "pulsar_old" for k in q)
    observed = {r.observed_at for r in got.rows["queue_by_destination"] if r.value}
    assert observed == {NOW - timedelta(seconds=60)}


def test_queue_window_is_configurable(field_db: InfluxServer) -> None:
    settings = field_db.settings(
        window="2m", measurements={"queue_by_destination": {"batch_tolerance": None}}
    )
    q = values(fetch_metrics(config(settings), NOW).rows["queue_by_destination"])
    assert q[("slurm_main", "", "queued")] == 0
    wide = field_db.settings(window="5d", measurements={"queue_by_destination": {"batch_tolerance": None}})
    q = values(fetch_metrics(config(wide), NOW).rows["queue_by_destination"])
    assert q[("slurm_main", "", "queued")] == 40
    assert q[("pulsar_old", "", "queued")] == 99


def test_queue_run_time_newest_per_tool(field_db: InfluxServer) -> None:
    rows = fetch_metrics(config(field_db.settings()), NOW).rows["destination-queue-run-time"]
    v = values(rows)
    assert v[("pulsar_de02", BWAMETH, "count")] == 12
    assert v[("pulsar_de02", BWAMETH, "median_queue_s")] == 61
    assert v[("pulsar_de02", BWAMETH, "median_run_s")] == 1500
    assert v[("slurm_main", "upload1", "median_run_s")] == 35
    assert len(rows) == 6
    # The server already keeps only the newest point per (destination, tool).
    spec = next(s for s in DEFAULT_SPECS if s.key == "destination-queue-run-time")
    points = Influx1Client(field_db.url, field_db.database).points(spec, NOW - timedelta(days=2))
    assert sorted((p.tags["destination_id"], p.fields["count"]) for p in points) == [
        ("pulsar_de02", 12),
        ("slurm", 300),
    ]


def test_htcondor_both_generations(field_db: InfluxServer) -> None:
    v = values(fetch_metrics(config(field_db.settings()), NOW).rows["htcondor_cluster_usage"])
    # Legacy: cluster totals as fields, destination_id (the vhost) a string field.
    assert v[("pulsar_fr", "", "total_cores")] == 96
    assert v[("pulsar_fr", "", "free_cores")] == 32
    assert v[("pulsar_fr", "", "free_mem_mb")] == 130000
    assert v[("pulsar_fr", "", "free_gpus")] == 1
    assert v[("pulsar_fr", "", "status")] == "online"
    assert v[("pulsar_be", "", "status")] == "offline"
    # Current: sum over the newest batch of slot shapes; the quoted tag maps to pulsar_it.
    assert v[("pulsar_it", "", "free_cores")] == 3 * 8 + 10 * 1
    assert v[("pulsar_it", "", "free_mem_mb")] == 3 * 16000 + 10 * 3800
    assert v[("pulsar_it", "", "status")] == "online"
    assert ("pulsar_it", "", "total_cores") not in v


def test_carbon_intensity(field_db: InfluxServer) -> None:
    v = values(fetch_metrics(config(field_db.settings()), NOW).rows["pulsar_carbon_intensity"])
    assert v == {("pulsar_it", "", "carbon_intensity"): 312.5, ("pulsar_it", "", "price_day_ahead"): 98.2}


def test_pull_into_store(field_db: InfluxServer, store: Store) -> None:
    assert pull_metrics(config(field_db.settings()), store, NOW) == []
    v = values(store.metrics(["pulsar_de02", "pulsar_it"], tool_id=BWAMETH))
    assert v[("pulsar_de02", "", "queued")] == 7
    assert v[("pulsar_de02", BWAMETH, "median_run_s")] == 1500
    assert v[("pulsar_it", "", "free_mem_mb")] == 86000


def test_renamed_measurement_and_fields(influxdb: InfluxServer) -> None:
    db = influxdb.fresh()
    db.write(
        [
            f"my\\ queue,dest=pulsar_de02,st=waiting n=5 {T - 30}",
            f"my\\ queue,dest=pulsar_de02,st=run n=1 {T - 30}",
        ]
    )
    settings = db.settings(
        measurements={
            "queue_by_destination": {
                "name": "my queue",
                "columns": {"destination": "dest", "state": "st", "count": "n"},
                "states": {"queued": "waiting", "running": "run"},
            }
        }
    )
    got = fetch_metrics(config(settings), NOW)
    q = values(got.rows["queue_by_destination"])
    assert (q[("pulsar_de02", "", "queued")], q[("pulsar_de02", "", "running")]) == (5, 1)


def test_bad_override_is_a_warning_and_defaults_stay(field_db: InfluxServer) -> None:
    settings = field_db.settings(measurements={"queue_by_destination": {"window": "15 minutes; DROP"}})
    got = fetch_metrics(config(settings), NOW)
    assert any("queue_by_destination" in w and "invalid duration" in w for w in got.warnings)
    assert values(got.rows["queue_by_destination"])[("pulsar_de02", "", "queued")] == 7


def test_one_failing_measurement_does_not_stop_the_others(field_db: InfluxServer) -> None:
    # GROUP BY "time" is a statement error ("time() is a function..."): only this measurement fails.
    settings = field_db.settings(measurements={"queue_by_destination": {"columns": {"state": "time"}}})
    got = fetch_metrics(config(settings), NOW)
    assert len(got.warnings) == 1 and "'queue_by_destination'" in got.warnings[0]
    assert set(got.rows) == {
        "destination-queue-run-time",
        "htcondor_cluster_usage",
        "pulsar_carbon_intensity",
    }


def test_missing_database_warns_per_measurement(influxdb: InfluxServer) -> None:
    got = fetch_metrics(config(InfluxSettings(url=influxdb.url, database="no_such_db")), NOW)
    assert got.rows == {}
    assert len(got.warnings) == 4
    assert all("database not found" in w for w in got.warnings)


# --- auth ---------------------------------------------------------------------------------------


def test_auth_right_password_with_special_characters(influxdb_auth: InfluxServer, store: Store) -> None:
    db = influxdb_auth.fresh()
    db.write(field_lines())
    assert db.password is not None and all(c in db.password for c in "\"':\\ ;")
    assert pull_metrics(config(db.settings()), store, NOW) == []
    assert values(store.metrics(["pulsar_de02"]))[("pulsar_de02", "", "queued")] == 7


@pytest.mark.parametrize("username,password", [("admin", "wrong"), (None, None), ("nobody", "x")])
def test_auth_failure_is_a_warning_and_keeps_cache(
    influxdb_auth: InfluxServer, store: Store, username: str | None, password: str | None
) -> None:
    old = [MetricRow("queue_by_destination", "pulsar_de02", "queued", value=4.0)]
    store.replace_metrics("queue_by_destination", old, NOW - timedelta(hours=1))
    settings = influxdb_auth.settings(username=username, password=password)
    warnings = pull_metrics(config(settings), store, NOW)
    assert len(warnings) == 1
    assert "authentication failed" in warnings[0] or "401" in warnings[0]
    assert values(store.metrics(["pulsar_de02"])) == {("pulsar_de02", "", "queued"): 4.0}


def test_auth_off_server_ignores_credentials(field_db: InfluxServer) -> None:
    got = fetch_metrics(config(field_db.settings(username="any", password="thing")), NOW)
    assert got.warnings == []


def test_client_ping_and_post(field_db: InfluxServer) -> None:
    client = Influx1Client(field_db.url, field_db.database)
    client.ping()
    q = 'SELECT "count" FROM "queue_by_destination" WHERE "state" = $s AND time > $since'
    params = {"s": "running", "since": (T - 900) * 10**9}
    assert client.query(q, params, post=True) == client.query(q, params)
    assert len(client.query(q, params)) == 2


# --- hostile ids --------------------------------------------------------------------------------


def test_hostile_destination_ids_round_trip(influxdb: InfluxServer, store_url: str) -> None:
    """Hostile ids as tag values -> the batched query -> SQLite and PostgreSQL stores, unchanged."""
    store = Store.open(store_url)
    db = influxdb.fresh()
    db.write(
        f"queue_by_destination,destination_id={escape_key(d)},state=queued count={i + 1} {T - 30}"
        for i, d in enumerate(HOSTILE_IDS)
    )
    destinations = tuple(dest(d) for d in HOSTILE_IDS)
    try:
        assert pull_metrics(config(db.settings(), destinations), store, NOW) == []
        v = values(store.metrics(HOSTILE_IDS))
    finally:
        store.close()
    for i, d in enumerate(HOSTILE_IDS):
        assert v[(d, "", "queued")] == i + 1
        assert v[(d, "", "running")] == 0


def test_bind_parameters_where_string_building_breaks(influxdb: InfluxServer) -> None:
    """The same per-destination lookup with bind parameters vs an f-string: only the former is right."""
    db = influxdb.fresh()
    db.write(
        f"queue_by_destination,destination_id={escape_key(d)},state=queued count={i + 1} {T - 30}"
        for i, d in enumerate(HOSTILE_IDS)
    )
    client = Influx1Client(db.url, db.database)
    q = 'SELECT "count", "destination_id" FROM "queue_by_destination" WHERE "destination_id" = $d'
    for i, d in enumerate([*HOSTILE_IDS]):
        points = client.query(q, {"d": d})
        assert [(p.fields["destination_id"], p.fields["count"]) for p in points] == [(d, i + 1)]
    assert client.query(q, {"d": "nothing\nOR 1=1"}) == []
    # What the seed did: the id is pasted into the text. It returns every destination's row ...
    injected = "x' OR '1'='1"
    naive = f'SELECT "count" FROM "queue_by_destination" WHERE "destination_id" = \'{injected}\''
    assert len(client.query(naive)) == len(HOSTILE_IDS)
    # ... or is a syntax error.
    with pytest.raises(Exception, match="error parsing query"):
        client.query(
            f'SELECT "count" FROM "queue_by_destination" WHERE "destination_id" = \'{HOSTILE_IDS[1]}\''
        )


def test_identifiers_are_quoted(influxdb: InfluxServer) -> None:
    db = influxdb.fresh()
    name = 'we"ird\\name, x'
    db.write([f"{escape_measurement(name)},destination_id=pulsar_de02,state=queued count=3 {T - 10}"])
    assert quote_ident(name) == '"we\\"ird\\\\name, x"'
    got = fetch_metrics(config(db.settings(measurements={"queue_by_destination": {"name": name}})), NOW)
    assert values(got.rows["queue_by_destination"])[("pulsar_de02", "", "queued")] == 3


def test_newline_ids_cannot_be_line_protocol() -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        escape_key("two\nlines")
    with pytest.raises(ValueError, match="cannot be written"):
        escape_key("trailing\\")


# --- down, TLS ----------------------------------------------------------------------------------


def test_influxdb_down_keeps_old_cache(store: Store) -> None:
    old = [MetricRow("htcondor_cluster_usage", "pulsar_it", "free_cores", value=8.0)]
    store.replace_metrics("htcondor_cluster_usage", old, NOW - timedelta(hours=1))
    settings = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="metasched", timeout=2.0)
    warnings = pull_metrics(config(settings), store, NOW)
    assert len(warnings) == 1
    assert "unreachable" in warnings[0] and "cached values kept" in warnings[0]
    assert values(store.metrics(["pulsar_it"])) == {("pulsar_it", "", "free_cores"): 8.0}


def test_no_influxdb_configured_is_a_no_op(store: Store) -> None:
    cfg = Config(path=None, database=None, ssh=SSHSettings(), destinations=DESTS)
    assert pull_metrics(cfg, store, NOW) == []
    write_summary(cfg, store, NOW)


def test_ssl_context_follows_verify_setting() -> None:
    strict = ssl_context(True)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    lax = ssl_context(False)
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname


def test_tls(influxdb_tls: InfluxServer) -> None:
    """A real HTTPS InfluxDB with a self-signed certificate: verification on refuses it, off accepts it."""
    db = influxdb_tls.fresh()
    db.write(field_lines())
    got = fetch_metrics(config(db.settings(verify_ssl=True)), NOW)
    assert got.rows == {}
    assert len(got.warnings) == 1 and "CERTIFICATE_VERIFY_FAILED" in got.warnings[0]
    got = fetch_metrics(config(db.settings(verify_ssl=False)), NOW)
    assert got.warnings == []
    assert values(got.rows["queue_by_destination"])[("pulsar_de02", "", "queued")] == 7


def test_tls_verified_with_a_trusted_ca(influxdb_tls: InfluxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification stays on and succeeds once the site's CA is trusted (OpenSSL's SSL_CERT_FILE)."""
    db = influxdb_tls.fresh()
    db.write(field_lines())
    monkeypatch.setenv("SSL_CERT_FILE", str(db.cafile))
    got = fetch_metrics(config(db.settings(verify_ssl=True)), NOW)
    assert got.warnings == []
    assert values(got.rows["queue_by_destination"])[("pulsar_de02", "", "running")] == 3


# --- write_summary ------------------------------------------------------------------------------


def summary(dest_id: str, **kw: Any) -> DestinationSummary:
    base: dict[str, Any] = {
        "id": dest_id,
        "scheduler": "slurm",
        "host": "h",
        "reachable": True,
        "last_attempt": NOW,
        "last_success": NOW,
        "error": None,
        "cores_total": 64,
        "cores_free": 10,
        "mem_total_mb": 256000,
        "mem_free_mb": 1000,
        "gpus_total": 2,
        "gpus_free": 1,
        "nodes_total": 4,
        "nodes_unavailable": 1,
        "jobs_running": 7,
        "jobs_queued": 3,
        "jobs_held": 0,
        "queued_cores": 6,
        "running_cores": 54,
    }
    base.update(kw)
    return DestinationSummary(**base)


def test_summary_lines_round_trip(influxdb_auth: InfluxServer) -> None:
    from metasched.metrics.measurements import summary_line

    db = influxdb_auth.fresh()
    ids = [d for d in HOSTILE_IDS]
    client = Influx1Client(db.url, db.database, username=db.username, password=db.password)
    client.write(
        [summary_line("metasched_destination", summary(d, jobs_queued=i), T) for i, d in enumerate(ids)]
    )
    q = (
        'SELECT "cores_total", "jobs_queued", "mem_total_mb", "reachable" FROM "metasched_destination" '
        'WHERE "destination_id" = $d'
    )
    for i, d in enumerate(ids):
        [p] = client.query(q, {"d": d})
        assert p.time == T
        assert p.fields == {"cores_total": 64, "jobs_queued": i, "mem_total_mb": 256000, "reachable": True}


def test_write_summary_from_store(influxdb: InfluxServer, store: Store) -> None:
    """Summaries the store computed from a real snapshot come back from InfluxDB unchanged."""
    db = influxdb.fresh()
    ids = ["slurm_main", "pulsar de,02=x\"'"]
    store.sync_destinations([(d, "slurm", "local") for d in ids])
    nodes = [Node("n1", "mixed", True, cores_total=8, cores_alloc=3, mem_total_mb=16000, mem_alloc_mb=4000)]
    jobs = [Job("1", RUNNING, cores=3, mem_mb=4000), Job("2", PENDING, cores=2)]
    for d in ids:
        store.write_snapshot(d, Snapshot(nodes=nodes, jobs=jobs), run_id="r1", started=NOW, finished=NOW)
    write_summary(config(db.settings(write_summary=True)), store, NOW)
    fields = "cores_total, cores_free, mem_total_mb, jobs_running, jobs_queued, reachable"
    body = db.admin(f"SELECT {fields} FROM metasched_destination GROUP BY destination_id")
    got = {s["tags"]["destination_id"]: s["values"] for s in body["results"][0]["series"]}
    want = {
        s.id: [[T, s.cores_total, s.cores_free, s.mem_total_mb, s.jobs_running, s.jobs_queued, s.reachable]]
        for s in store.summaries()
    }
    assert got == want
    assert set(got) == set(ids)
    assert got["slurm_main"][0][1] == 8


def test_write_summary_off_writes_nothing(influxdb: InfluxServer, store: Store) -> None:
    db = influxdb.fresh()
    write_summary(config(db.settings(write_summary=False)), store, NOW)
    assert "series" not in db.admin("SHOW MEASUREMENTS")["results"][0]


# --- from a real config ---------------------------------------------------------------------------


def test_seed_environment_variables(influxdb_auth: InfluxServer, store: Store) -> None:
    """A seed user's set_env.sh (INFLUXDB_*) works unchanged, special-character password included."""
    db = influxdb_auth.fresh()
    db.write(field_lines())
    port = urllib.parse.urlsplit(db.url).port
    env = {
        "INFLUXDB_HOST": "127.0.0.1",
        "INFLUXDB_PORT": str(port),
        "INFLUXDB_SSL": "false",
        "INFLUXDB_USERNAME": str(db.username),
        "INFLUXDB_PASSWORD": str(db.password),
        "INFLUXDB_DATABASE": db.database,
    }
    cfg = load_config(None, env)
    assert pull_metrics(cfg, store, NOW) == []
    assert values(store.metrics(["pulsar_de02"]))[("pulsar_de02", "", "queued")] == 7


def test_seed_environment_over_tls(influxdb_tls: InfluxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed always used TLS: INFLUXDB_HOST alone means https with verification."""
    db = influxdb_tls.fresh()
    db.write(field_lines())
    env = {
        "INFLUXDB_HOST": "127.0.0.1",
        "INFLUXDB_PORT": str(urllib.parse.urlsplit(db.url).port),
        "INFLUXDB_DATABASE": db.database,
    }
    cfg = load_config(None, env)
    assert cfg.influxdb is not None and cfg.influxdb.url.startswith("https://")
    assert "CERTIFICATE_VERIFY_FAILED" in fetch_metrics(cfg, NOW).warnings[0]
    monkeypatch.setenv("SSL_CERT_FILE", str(db.cafile))
    assert fetch_metrics(cfg, NOW).warnings == []


def test_yaml_config_with_password_file_and_mapping(influxdb_auth: InfluxServer, tmp_path: Path) -> None:
    db = influxdb_auth.fresh()
    db.write(field_lines())
    (tmp_path / "influx-pw").write_text(f"{db.password}\n")
    conf = tmp_path / "config.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "database": str(tmp_path / "state.db"),
                "influxdb": {
                    "url": db.url,
                    "database": db.database,
                    "username": db.username,
                    "password_file": str(tmp_path / "influx-pw"),
                    "measurements": {"destination-queue-run-time": {"enabled": False}},
                },
                "destinations": [
                    {"id": "slurm_main", "scheduler": "slurm", "host": "local", "runner": "slurm"},
                    {"id": "pulsar_it", "scheduler": "htcondor", "host": "local", "vhost": "pulsar_it01"},
                ],
            }
        )
    )
    cfg = load_config(conf, {})
    got = fetch_metrics(cfg, NOW)
    assert got.warnings == []
    assert "destination-queue-run-time" not in got.rows
    assert values(got.rows["queue_by_destination"])[("slurm_main", "", "running")] == 12
    assert values(got.rows["htcondor_cluster_usage"])[("pulsar_it", "", "free_cores")] == 34


def test_redirects_are_not_followed_with_credentials() -> None:
    """A (misconfigured or hostile) server answering 307 must not receive the Basic auth header elsewhere."""
    seen: list[str | None] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Redirect(Target):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{target.server_port}{self.path}")
            self.end_headers()

    target = http.server.HTTPServer(("127.0.0.1", 0), Target)
    redirect = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (target, redirect)]
    for t in threads:
        t.start()
    try:
        client = Influx1Client(
            f"http://127.0.0.1:{redirect.server_port}", "db", username="u", password="secret"
        )
        with pytest.raises(InfluxError, match="307"):
            client.query("SELECT 1")
    finally:
        for s in (target, redirect):
            s.shutdown()
            s.server_close()
    assert seen == []
