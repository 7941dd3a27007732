"""The pieces of serve that need no server: the `serve:` config block and ${CREDENTIALS_DIRECTORY}
paths (real files), the Prometheus page (read back by the Prometheus client's parser), the token
check, --until parsing, the CLI overrides, and the read cache over a real SQLite file changed by
another connection, and the per-destination memo ranking keeps in it."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metasched.app.observations import Seen
from metasched.app.ranking import DISTANCES, rank
from metasched.cli.admin import parse_until
from metasched.domain.destination import DestinationSummary, MetricRow, PlacementEntry
from metasched.domain.errors import ConfigError, InputError
from metasched.domain.jobs import RUNNING, Job, Node, Snapshot
from metasched.rank import score
from metasched.rank.model import Observed
from metasched.serve.auth import authorized
from metasched.serve.cache import CachingStore
from metasched.serve.metrics import LoopStats, RequestStats, render
from metasched.serve.peers import LOOP_REPORT_MAX_AGE_S, LoopReport, Peers
from metasched.serve.state import Overrides, apply_overrides
from metasched.settings import Config, load_config
from metasched.store import Store, inflight, rank_reads
from metasched.store.placements import record_placement
from metasched.store.rank_reads import SUMMARY_FIELDS

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


DEST = "destinations:\n  - {id: a, scheduler: node, host: local}\n"


# --- config -----------------------------------------------------------------------------------------


def test_serve_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DEST), {})
    assert (cfg.serve.host, cfg.serve.port, cfg.serve.token) == ("127.0.0.1", 8000, None)
    assert cfg.serve.max_body_bytes == 1 << 20 and cfg.serve.open_endpoints == (
        "/healthz",
        "/metrics",
        "/docs",
        "/openapi.json",
    )


def test_token_sources_in_order(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "serve-token").write_text("from-credential\n")
    (tmp_path / "tok").write_text("from-file\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "METASCHED_TOKEN": "from-env"}
    literal = write(tmp_path, DEST + "serve: {token: literal}\n")
    assert load_config(literal, env).serve.token == "literal"
    by_file = write(tmp_path, DEST + "serve: {token_file: tok}\n")  # relative to the config file
    assert load_config(by_file, env).serve.token == "from-file"
    plain = write(tmp_path, DEST)
    assert load_config(plain, env).serve.token == "from-env"
    assert load_config(plain, {"CREDENTIALS_DIRECTORY": str(creds)}).serve.token == "from-credential"
    assert load_config(plain, env, read_secrets=False).serve.token is None  # rank never reads secrets


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("serve: {token: a, token_file: /x}", "serve.token_file: give token or token_file, not both"),
        ("serve: {token_file: /nonexistent/tok}", "serve.token_file: cannot read /nonexistent/tok"),
        ("serve: {port: 0}", "serve.port: must be an integer 1-65535"),
        ("serve: {workers: 0}", "serve.workers"),
        ("serve: {workers: 65}", "serve.workers"),
        ("serve: {max_body_bytes: 10}", "serve.max_body_bytes"),
        ("serve: {open_endpoints: [/admin]}", "serve.open_endpoints[0]: must be one of"),
        ("serve: {host: 'a b'}", "serve.host"),
        ("serve: {prot: 1}", "serve.prot: unknown key (did you mean 'port'?)"),
        ("serve: [1]", "serve: must be a mapping"),
    ],
)
def test_serve_problems_name_the_key(tmp_path: Path, block: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, DEST + block + "\n"), {})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_empty_token_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("\n")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, DEST + "serve: {token_file: tok}\n"), {})
    assert "is empty" in err.value.problems[0]


def test_credentials_directory_expands_in_file_paths(tmp_path: Path) -> None:
    creds = tmp_path / "run-creds"
    creds.mkdir()
    (creds / "influxdb-password").write_text("pw\n")
    text = (
        "ssh:\n  key_file: ${CREDENTIALS_DIRECTORY}/ssh-key\n  known_hosts: $CREDENTIALS_DIRECTORY/known\n"
        "influxdb:\n  url: http://127.0.0.1:8086\n  database: galaxy\n"
        "  password_file: ${CREDENTIALS_DIRECTORY}/influxdb-password\n" + DEST
    )
    cfg = load_config(write(tmp_path, text), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.ssh.key_file == str(creds / "ssh-key") and cfg.ssh.known_hosts == str(creds / "known")
    assert cfg.destinations[0].ssh.key_file == str(creds / "ssh-key")
    assert cfg.influxdb is not None and cfg.influxdb.password == "pw"
    # Without the variable (rank run by Galaxy) the path stays as written, not joined to the config dir.
    plain = load_config(write(tmp_path, text.replace("  password_file", "  # password_file")), {})
    assert plain.ssh.key_file == "${CREDENTIALS_DIRECTORY}/ssh-key"


def test_cli_overrides_every_destination(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "ssh: {user: a, key_file: /k1}\n" + DEST + "  - {id: b, scheduler: node, host: h, user: b}\n",
        ),
        {},
    )
    out = apply_overrides(cfg, Overrides(host="0.0.0.0", port=9000, ssh_user="ops", ssh_key_file="/k2"))
    assert {(d.ssh.user, d.ssh.key_file) for d in out.destinations} == {("ops", "/k2")}
    assert (out.serve.host, out.serve.port) == ("0.0.0.0", 9000)
    assert apply_overrides(cfg, Overrides()) == cfg


# --- metrics page -----------------------------------------------------------------------------------


def summary(dest_id: str, **kw: object) -> DestinationSummary:
    values: dict[str, object] = {
        "id": dest_id,
        "scheduler": "slurm",
        "host": "h",
        "reachable": True,
        "last_attempt": NOW,
        "last_success": NOW,
        "error": None,
        **dict.fromkeys(SUMMARY_FIELDS, 1),
    }
    values.update(kw)
    return DestinationSummary(**values)  # type: ignore[arg-type]


def test_metrics_page_parses_with_hostile_ids() -> None:
    hostile = 'a"b\\c\nd'
    requests = RequestStats()
    requests.observe("/v1/rank", "POST", 200, 0.003)
    requests.observe("/v1/rank", "POST", 422, 0.0001)
    page = render(
        [
            summary(hostile, mem_total_mb=2048, disabled_reason="x", disabled_until=NOW + timedelta(hours=1)),
            summary("off", reachable=False, disabled_reason="y", disabled_until=NOW - timedelta(hours=1)),
        ],
        {},
        {"off": 2},
        LoopStats(cycles={"ok": 3, "skipped": 1}, last_cycle_end=NOW, alive=True),
        requests,
        NOW,
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert samples[("metasched_destination_up", (("destination", hostile),))] == 1
    assert samples[("metasched_destination_memory_total_bytes", (("destination", hostile),))] == 2048 * 2**20
    assert samples[("metasched_destination_disabled", (("destination", hostile),))] == 1
    assert samples[("metasched_destination_disabled", (("destination", "off"),))] == 0  # lapsed
    assert samples[("metasched_destination_collect_errors_total", (("destination", "off"),))] == 2
    assert samples[("metasched_collect_cycles_total", (("result", "skipped"),))] == 1
    bucket = ("metasched_http_request_duration_seconds_bucket", (("le", "0.005"), ("path", "/v1/rank")))
    assert samples[bucket] == 2
    assert samples[("metasched_http_request_duration_seconds_count", (("path", "/v1/rank"),))] == 2
    assert (
        samples[
            ("metasched_http_requests_total", (("code", "422"), ("method", "POST"), ("path", "/v1/rank")))
        ]
        == 1
    )


# --- token, --until --------------------------------------------------------------------------------


def test_authorized() -> None:
    assert authorized(None, None)
    assert authorized(b"Bearer s3cret", "s3cret") and authorized(b"bearer  s3cret ", "s3cret")
    assert not authorized(None, "s3cret")
    assert not authorized(b"Bearer s3cre", "s3cret") and not authorized(b"Basic s3cret", "s3cret")
    assert not authorized(b"Bearer \xff", "s3cret")


def test_parse_until() -> None:
    assert parse_until("90m", NOW) == NOW + timedelta(minutes=90)
    assert parse_until("1d12h", NOW) == NOW + timedelta(hours=36)
    assert parse_until("2026-11-24T08:00", NOW) == datetime(2026, 11, 24, 8, tzinfo=UTC)
    assert parse_until("2026-11-24T09:00+01:00", NOW) == datetime(2026, 11, 24, 8, tzinfo=UTC)
    for bad in ("soon", "0m", "2026-11-22T00:00Z", ""):
        with pytest.raises(InputError, match="--until"):
            parse_until(bad, NOW)


# --- the read cache ---------------------------------------------------------------------------------


def test_cache_sees_commits_of_other_connections(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    writer = Store.open(db)
    writer.write_snapshot("a", Snapshot([Node("n", "idle", True, 4)]), run_id="r", started=NOW, finished=NOW)
    reader = CachingStore.open(db)
    first = reader.summaries(["a"])
    assert first[0].cores_total == 4 and reader.summaries(["a"]) == first
    writer.write_snapshot("a", Snapshot([Node("n", "idle", True, 8)]), run_id="s", started=NOW, finished=NOW)
    assert reader.summaries(["a"])[0].cores_total == 8
    writer.set_disabled("a", "maintenance", None)
    assert reader.summaries(["a"])[0].disabled_reason == "maintenance"
    assert reader.tool_times("t", ["a"])["a"].count == 0 and reader.metrics(["a"]) == []

    # Writes through the caching store's own connection (the collect loop's) are seen too.
    reader.write_snapshot("a", Snapshot([Node("n", "idle", True, 2)]), run_id="t", started=NOW, finished=NOW)
    assert reader.summaries(["a"])[0].cores_total == 2
    writer.write_snapshot("a", Snapshot([Node("n", "idle", True, 8)]), run_id="u", started=NOW, finished=NOW)

    seen: list[int] = []
    other = threading.Thread(target=lambda: seen.append(reader.summaries(["a"])[0].cores_total))
    other.start()
    other.join()
    assert seen == [8]  # another thread reads through its own connection and cache

    # The destination's typical run time (queue drain pace) is cached and refreshed the same way.
    assert reader.typical_run_s(["a"]) == {}
    started = NOW - timedelta(seconds=600)
    job = Job("7", RUNNING, name="g7_cat1_u", submit_time=started, start_time=started)
    node = Node("n", "idle", True, 8)
    writer.write_snapshot("a", Snapshot([node], jobs=[job]), run_id="v", started=NOW, finished=NOW)
    later = NOW + timedelta(seconds=60)
    writer.write_snapshot("a", Snapshot([node]), run_id="w", started=later, finished=later)
    assert reader.typical_run_s(["a"]) == {"a": 660.0}
    writer.close()
    reader.close()


def summary_reads(reader: CachingStore, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The id lists ``reader`` asks the database's summary query for, in order."""
    asked: list[list[str]] = []
    real = rank_reads.summaries

    def counting(db_: Any, ids: Any = None) -> Any:
        if db_ is reader.db:
            asked.append(list(ids))
        return real(db_, ids)

    monkeypatch.setattr(rank_reads, "summaries", counting)
    return asked


def test_cache_reads_only_the_ids_it_has_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a collect, each request reads from the database only the destinations no earlier
    request asked about; the answers are the plain store's, in its order, unknown ids skipped."""
    db = str(tmp_path / "s.db")
    writer = Store.open(db)
    started = NOW - timedelta(seconds=600)
    for dest, cores in (("a", 4), ("b", 8), ("c", 2)):
        job = Job("7", RUNNING, name="g7_cat1_u", submit_time=started, start_time=started)
        writer.write_snapshot(
            dest,
            Snapshot([Node("n", "idle", True, cores)], jobs=[job]),
            run_id=dest,
            started=NOW,
            finished=NOW,
        )
    rows = [
        MetricRow("influx", d, name, 5.0, tool_id=t)
        for d in ("c", "a")
        for name in ("wait_s", "run_s")
        for t in ("", "cat1")
    ]
    writer.replace_metrics("influx", rows, NOW)
    reader = CachingStore.open(db)
    asked = summary_reads(reader, monkeypatch)
    for ids in (["a", "b"], ["b", "ghost", "c", "a", "b"], ["c", "ghost"], ["a"]):
        assert reader.summaries(ids) == writer.summaries(ids)
        assert reader.tool_times("cat1", ids) == writer.tool_times("cat1", ids)
        assert reader.metrics(ids, "cat1") == writer.metrics(ids, "cat1")
        assert reader.typical_run_s(ids) == writer.typical_run_s(ids)
    assert asked == [["a", "b"], ["ghost", "c"]]
    writer.write_snapshot("b", Snapshot([Node("n", "idle", True, 16)]), run_id="x", started=NOW, finished=NOW)
    assert [s.cores_total for s in reader.summaries(["c", "b"])] == [2, 16]
    assert asked[-1] == ["c", "b"]  # a commit empties the tables
    writer.close()
    reader.close()


def test_cache_outlives_ledger_writes_but_not_state_changes(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another serve worker's (or rank's) placement writes leave what ranking reads alone, so the
    cache stays; a collect or a disable committed by another connection shows at once, on both
    backends (the store's state generation moves with them)."""
    writer = Store.open(store_url)
    writer.write_snapshot("a", Snapshot([Node("n", "idle", True, 4)]), run_id="r", started=NOW, finished=NOW)
    reader = CachingStore.open(store_url)
    reads = summary_reads(reader, monkeypatch)
    assert reader.summaries(["a"])[0].cores_total == 4
    memo = reader.derived("config")
    for n, store in enumerate((writer, reader, writer)):  # another connection's and its own
        entry = PlacementEntry(f"{n}", "a", "cat1", 1, 100, 0, NOW, 0, 1, 2)
        record_placement(store, entry)
        assert reader.summaries(["a"])[0].cores_total == 4
    assert reads == [["a"]] and reader.derived("config") is memo
    writer.set_disabled("a", "power work", None)
    assert reader.summaries(["a"])[0].disabled_reason == "power work"
    writer.write_snapshot("a", Snapshot([Node("n", "idle", True, 8)]), run_id="s", started=NOW, finished=NOW)
    assert reader.summaries(["a"])[0].cores_total == 8
    assert reads == [["a"]] * 3 and reader.derived("config") is not memo
    writer.close()
    reader.close()


def test_cache_keeps_placements_in_flight_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-flight entries a CachingStore hands out are the database's after every kind of write
    (its own, another connection's, re-placed, resolved, out of the window), reading only what was
    written since its last look."""
    db = str(tmp_path / "s.db")
    writer = Store.open(db)
    reader = CachingStore.open(db)
    reads: list[str] = []
    for name in ("all_inflight", "changed_since"):
        real = getattr(inflight, name)
        monkeypatch.setattr(
            inflight, name, lambda *a, _real=real, _name=name: reads.append(_name) or _real(*a)
        )

    def entry(job: str, dest: str, s: int, cores: int = 1) -> PlacementEntry:
        return PlacementEntry(job, dest, "cat1", cores, 100, 0, NOW + timedelta(seconds=s), 0, 1, 2)

    def same(since_s: int = 0) -> None:
        since = NOW + timedelta(seconds=since_s)
        ids = ["a", "b", "c"]
        assert reader.inflight_placements(ids, since) == writer.inflight_placements(ids, since)
        by_dest = reader.inflight_by_destination(ids, since)
        assert {d: list(v) for d, v in by_dest.items()} == writer.inflight_by_destination(ids, since)

    record_placement(writer, entry("1", "a", 1))
    same()
    assert reads == ["all_inflight"]
    same()
    assert reads == ["all_inflight"]  # nothing committed: no read
    record_placement(writer, entry("2", "b", 2))  # another connection's
    record_placement(reader, entry("3", "a", 3))  # its own
    same()
    record_placement(writer, entry("1", "b", 4, cores=4))  # ranked again, elsewhere
    writer.db.fetch("UPDATE placement SET state = 'resolved' WHERE job_id = '2' RETURNING 1", [])
    same()
    assert reads == ["all_inflight", "changed_since", "changed_since"]
    assert [(e.job_id, e.destination) for e in reader.inflight_placements(["a", "b"], NOW)] == [
        ("3", "a"),
        ("1", "b"),
    ]
    same(since_s=4)  # "3" falls out of the window ...
    same(since_s=0)  # ... and back in when a request looks further back
    handed = reader.inflight_by_destination(["a", "b"], NOW)
    assert reader.inflight_by_destination(["a", "b"], NOW)["a"] is handed["a"]  # unchanged: the same
    record_placement(writer, entry("4", "a", 5))
    again = reader.inflight_by_destination(["a", "b"], NOW)
    assert again["a"] is not handed["a"] and again["b"] is handed["b"]  # only what changed is new
    same()
    writer.close()
    reader.close()


def test_derived_dict_lasts_while_database_and_config_do(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    writer = Store.open(db)
    reader = CachingStore.open(db)
    cfg, other_cfg = load_config(write(tmp_path, DEST), {}), load_config(write(tmp_path, DEST), {})
    memo = reader.derived(cfg)
    assert memo is not None
    memo["k"] = 1
    assert reader.derived(cfg) is memo
    writer.write_snapshot("a", Snapshot([Node("n", "idle", True, 4)]), run_id="r", started=NOW, finished=NOW)
    fresh = reader.derived(cfg)
    assert fresh is not memo and fresh == {}  # a request holding the old one writes into nothing shared
    fresh["k"] = 1
    assert reader.derived(other_cfg) == {}  # a reloaded config: observations made with the old one go
    reader.write_snapshot("a", Snapshot([Node("n", "idle", True, 2)]), run_id="s", started=NOW, finished=NOW)
    assert reader.derived(other_cfg) == {}  # this connection's own writes too
    writer.close()
    reader.close()


def test_memo_gives_the_answer_at_the_end_of_the_second(tmp_path: Path) -> None:
    """serve's per-destination memo: the same answer as ranking without it at the second's end, for
    every request of that second, whatever the job; inline metrics are the request's own."""
    db = str(tmp_path / "s.db")
    writer = Store.open(db)
    started = NOW - timedelta(seconds=90)
    jobs = [Job("7", RUNNING, name="g7_cat1_u", cores=2, submit_time=started, start_time=started)]
    for dest in ("a", "b"):
        snap = Snapshot([Node("n", "mixed", True, 8, 6)], jobs=jobs)
        writer.write_snapshot(dest, snap, run_id=dest, started=NOW, finished=NOW)
    cfg = load_config(write(tmp_path, "destinations:\n  - {id: a, scheduler: node, host: local}\n"), {})
    reader = CachingStore.open(db)
    at = NOW + timedelta(seconds=7, microseconds=654_321)

    def request(cores: int) -> dict[str, Any]:
        return {
            "job": {"tool_id": "cat1", "cores": cores},
            "destinations": [{"id": "a"}, {"id": "b"}, {"id": "c", "metrics": {"free_cores": 3}}],
        }

    memo = reader.derived(cfg)
    assert memo is not None
    for cores in (1, 4, 1):
        got = rank(request(cores), cfg, reader, at, memo=memo)
        assert got == rank(request(cores), cfg, reader, at.replace(microsecond=0) + timedelta(seconds=1))
        assert sorted(k[0] for k in memo if k != DISTANCES) == ["a", "b"]  # observed once; "c" has its own
    assert "collected 8 s ago" in " ".join(got["ranked"][0]["reasons"])
    writer.close()
    reader.close()


def collected(tmp_path: Path, *dests: str) -> tuple[Store, CachingStore, Config]:
    """A store where each of ``dests`` was collected at NOW (one node, 6 of its 8 cores free), serve's
    caching reader on it, and a config: what the memo tests rank against."""
    db = str(tmp_path / "s.db")
    writer = Store.open(db)
    for dest in dests:
        snap = Snapshot([Node("n", "mixed", True, 8, 6)])
        writer.write_snapshot(dest, snap, run_id=dest, started=NOW, finished=NOW)
    return writer, CachingStore.open(db), load_config(write(tmp_path, DEST), {})


def test_memo_adds_each_jobs_own_placements_in_flight(tmp_path: Path) -> None:
    """With the ledger's placements in flight, the memo still observes each destination once; every
    job sees the others' placements, not its own, as ranking without the memo does."""
    writer, reader, cfg = collected(tmp_path, "a", "b")
    at = NOW + timedelta(seconds=3, microseconds=250_000)
    memo = reader.derived(cfg)
    for job in range(1, 5):
        req = {
            "job": {"tool_id": "cat1", "cores": 2, "job_id": job},
            "destinations": [{"id": "a"}, {"id": "b"}],
        }
        got = rank(req, cfg, reader, at, memo=memo)
        assert got == rank(req, cfg, reader, at.replace(microsecond=0) + timedelta(seconds=1)), job
        assert sorted(k[0] for k in memo if k != DISTANCES) == ["a", "b"]
    ahead = [why.split()[0] for r in got["ranked"] for why in r["reasons"] if "placed here since" in why]
    assert sum(map(int, ahead)) == 3  # jobs 1-3, spread over a and b; job 4 is not ahead of itself
    writer.close()
    reader.close()


def test_memo_reads_the_store_only_for_what_it_has_not_observed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose destinations were observed earlier in the same second (same tool) reads
    nothing of their state; one with a new destination or another tool reads only those."""
    writer, reader, cfg = collected(tmp_path, "a", "b", "c")
    reads: list[tuple[str, list[str]]] = []
    for name in ("summaries", "tool_times", "metrics", "typical_run_s"):
        real = getattr(reader, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            ids = args[1] if _name == "tool_times" else args[0]
            reads.append((_name, list(ids)))
            return _real(*args, **kw)

        monkeypatch.setattr(reader, name, counting)
    at = NOW + timedelta(seconds=3, microseconds=250_000)
    memo = reader.derived(cfg)

    def request(tool: str, *ids: str) -> dict[str, Any]:
        return {"job": {"tool_id": tool, "cores": 2}, "destinations": [{"id": i} for i in ids]}

    def ranked(req: dict[str, Any]) -> list[str]:
        reads.clear()
        got = rank(req, cfg, reader, at, memo=memo)
        read = sorted({i for _, ids in reads for i in ids})
        assert got == rank(req, cfg, reader, at.replace(microsecond=0) + timedelta(seconds=1))
        return read

    assert ranked(request("cat1", "a", "b")) == ["a", "b"]
    assert ranked(request("cat1", "b", "a")) == []
    assert ranked(request("cat1", "a", "c")) == ["c"]
    assert ranked(request("cat2", "a")) == ["a"]
    writer.close()
    reader.close()


def test_memo_computes_a_job_shapes_terms_once_per_observation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Infeasibility and queue time are worked out once per destination and job shape in a second,
    apart for each set of weights and for explained answers; every answer is the one without memo."""
    writer, reader, cfg = collected(tmp_path, "a", "b")
    worked: list[float] = []
    real = score.queue_time
    monkeypatch.setattr(score, "queue_time", lambda job, *a: worked.append(job.cores) or real(job, *a))
    at = NOW + timedelta(seconds=3, microseconds=250_000)
    memo = reader.derived(cfg)

    def request(cores: int, **options: Any) -> dict[str, Any]:
        dests = [{"id": "a"}, {"id": "b", "max_accepted_cores": 2}]
        return {"job": {"tool_id": "cat1", "cores": cores}, "destinations": dests, "options": options}

    asked = [
        request(1),
        request(4),
        request(1),
        request(4),
        request(1, explain=False),
        request(1, weights={"dispatch_s": 30}),
        request(1, explain=False),
        request(1, weights={"dispatch_s": 30}),
    ]
    for i, req in enumerate(asked):
        worked.clear()
        got = rank(req, cfg, reader, at, memo=memo)
        assert worked == ([] if i in (2, 3, 6, 7) else [req["job"]["cores"]] * 2), i
        assert got == rank(req, cfg, reader, at.replace(microsecond=0) + timedelta(seconds=1)), i
    assert not rank(request(4), cfg, reader, at, memo=memo)["ranked"][1]["feasible"]  # b: max 2 cores
    writer.close()
    reader.close()


def test_memo_carries_terms_into_the_next_second_while_the_values_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next second observes again (ages move on), but a job shape's terms are taken over from
    the second before when the observation's values did not change; once they do (the state turned
    stale), they are worked out again. Every answer is the one without memo."""
    writer, reader, cfg = collected(tmp_path, "a")
    worked: list[float] = []
    real = score.queue_time
    monkeypatch.setattr(score, "queue_time", lambda job, *a: worked.append(job.cores) or real(job, *a))
    memo = reader.derived(cfg)
    req = {
        "job": {"tool_id": "cat1", "cores": 2},
        "destinations": [{"id": "a"}],
        "options": {"max_state_age": 4},
    }
    for second, works in ((1, True), (2, False), (3, False), (4, False), (5, True), (6, False)):  # 5: stale
        at = NOW + timedelta(seconds=second - 1, microseconds=500_000)
        worked.clear()
        got = rank(req, cfg, reader, at, memo=memo)
        assert worked == ([2.0] if works else []), second
        assert got == rank(req, cfg, reader, NOW + timedelta(seconds=second)), second
    writer.close()
    reader.close()


def test_kept_observation_sums_the_same_placements_once_but_never_a_job_ahead_of_itself() -> None:
    """Seen.demand keeps the sum of entries it was handed before (serve's cache hands out the same
    object until they change) for jobs not among them; one among them is left out of its own."""
    seen = Seen(Observed(), False, False, None)
    at = NOW - timedelta(seconds=1)
    placed = tuple(PlacementEntry(j, "a", "cat1", 2, 100, 0, NOW, 0, 1, 2) for j in ("1", "2"))
    assert seen.demand(placed, at, None) == (2, 4.0, 200.0, 0.0)
    assert seen.demand(placed, at, "9") == (2, 4.0, 200.0, 0.0)
    assert seen.demand(placed, at, "2") == (1, 2.0, 100.0, 0.0)
    assert seen.placed_demand is not None and seen.placed_demand[0] is placed
    kept = seen.placed_demand
    assert seen.demand(placed, at, "1") == (1, 2.0, 100.0, 0.0) and seen.placed_demand is kept
    fewer = placed[:1]
    assert seen.demand(fewer, at, None) == (1, 2.0, 100.0, 0.0)  # other entries: summed again
    assert seen.placed_demand is not kept


def test_memo_is_not_used_when_the_store_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store read that fails in serve ranks from the request alone, as the CLI does, with its
    warning: what the memo kept from earlier reads is not mixed into that answer."""
    writer, reader, cfg = collected(tmp_path, "a", "b")
    at = NOW + timedelta(seconds=3, microseconds=250_000)
    memo = reader.derived(cfg)
    req = {"job": {"tool_id": "cat1", "cores": 2}, "destinations": [{"id": "a"}, {"id": "b"}]}
    rank(req, cfg, reader, at, memo=memo)  # both observed and kept

    def broken(*_: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    alone = rank(req, cfg, None, at)["ranked"]
    for name, asked in (
        ("inflight_by_destination", req),
        ("summaries", {**req, "destinations": [{"id": "c"}]}),
    ):
        monkeypatch.setattr(reader, name, broken)
        got = rank(asked, cfg, reader, at, memo=memo)
        assert any(
            "state store unreadable (OperationalError: database is locked)" in w for w in got["warnings"]
        )
        assert got["ranked"] == (alone if asked is req else rank(asked, cfg, None, at)["ranked"]), name
        monkeypatch.undo()
    writer.close()
    reader.close()


def test_memo_keeps_distances_by_the_requests_input_locations(tmp_path: Path) -> None:
    """Each destination's distances to a request's input stores are measured once for every later
    request whose inputs lie in the same stores, whatever their sizes; answers are those without."""
    db = str(tmp_path / "s.db")
    Store.open(db).close()
    cfg = load_config(write(tmp_path, "destinations:\n  - {id: a, scheduler: node, host: local}\n"), {})
    reader = CachingStore.open(db)

    def request(sizes: list[int], store_ids: list[str]) -> dict[str, Any]:
        return {
            "job": {"tool_id": "cat1"},
            "destinations": [
                {"id": "a", "latitude": 48.0, "longitude": 7.8},
                {"id": "b", "latitude": 52.5, "longitude": 13.4},
                {"id": "c", "latitude": 48.0, "longitude": 7.8, "object_store_id": "far"},
                {"id": "d"},
            ],
            "datasets": {
                str(i): {"object_store_id": s, "size": n}
                for i, (n, s) in enumerate(zip(sizes, store_ids, strict=True))
            },
            "objectstores": {
                "near": {"latitude": 48.1, "longitude": 7.9},
                "far": {"latitude": 40.4, "longitude": -3.7},
            },
        }

    memo = reader.derived(cfg)
    asked = [
        request([10**9, 5 * 10**9], ["near", "far"]),
        request([3 * 10**9, 10**8], ["near", "far"]),  # the same stores: nothing measured again
        request([10**9, 10**9], ["far", "near"]),  # another order of the stores: another set of sources
        request([10**9, 10**9, 10**9], ["near", "unknown", "far"]),
    ]
    for i, req in enumerate(asked):
        assert rank(req, cfg, reader, NOW, memo=memo)["ranked"] == rank(req, cfg, reader, NOW)["ranked"], i
    measured = memo[DISTANCES]
    assert len(measured) == 3
    assert all(len(by_location) == 2 for by_location in measured.values())  # a and c share a location
    reader.close()


def test_disable_needs_a_row(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "s.db"))
    assert not store.set_disabled("ghost", "x", None)
    store.sync_destinations([("ghost", "node", "local")])
    assert store.set_disabled("ghost", "x", NOW)
    (s,) = Store.summaries(store, ["ghost"])
    assert s.disabled_reason == "x" and s.disabled_until == NOW
    assert store.set_disabled("ghost", None, NOW)
    (s,) = store.summaries(["ghost"])
    assert s.disabled_reason is None and s.disabled_until is None
    store.close()


def test_run_tally_counts_each_failed_run_record_once(tmp_path: Path) -> None:
    """Failed collect attempts counted from a real SQLite store's run records: incrementally, across
    reads that must reach further back than one batch, and with a scrape in the middle of a run."""
    from metasched.serve.metrics import RunTally

    tally = RunTally()
    tally.BATCH = 4  # small batches, so reading back far enough takes several of them
    with Store.open(str(tmp_path / "s.db")) as store:
        clock = iter(NOW + timedelta(minutes=i) for i in range(1000))

        def run(n: int, *dests: str) -> None:
            at = next(clock)
            for d in dests:
                if d == "bad":
                    store.record_failure(d, "down", run_id=f"r{n}", started=at, finished=at)
                else:
                    store.write_snapshot(d, Snapshot([]), run_id=f"r{n}", started=at, finished=at)

        for n in range(3):
            run(n, "good", "bad")
        tally.update(store)
        assert tally.errors() == {"bad": 3}
        for n in range(3, 13):
            run(n, "good", "bad")
        tally.update(store)
        assert tally.errors() == {"bad": 13}
        run(13, "good")  # the scrape comes while run r13 has written one of its two records
        tally.update(store)
        at = next(clock)
        store.record_failure("bad", "down", run_id="r13", started=at, finished=at)
        tally.update(store)
        tally.update(store)
        assert tally.errors() == {"bad": 14}
        assert {d: r.run_id for d, r in tally.latest().items()} == {"good": "r13", "bad": "r13"}


# --- serve.workers > 1: what the workers tell each other ---------------------------------------------


def test_peers_sum_the_others_and_notice_a_silent_collector(tmp_path: Path) -> None:
    first, second = (Peers(tmp_path, i, 2, collects=True) for i in (0, 1))
    assert second.loop()[1] == "collecting worker has not reported yet"
    stats = RequestStats()
    stats.observe("/ping", "GET", 200, 0.001)
    loop = LoopReport({"ok": 3}, NOW, alive=True, health=None)
    first.publish(stats.snapshot(), loop)
    assert second.requests() == [stats.snapshot()] and first.requests() == []  # never its own
    assert second.loop() == (LoopStats({"ok": 3}, NOW, alive=True), None)
    mine = RequestStats()
    mine.observe("/ping", "GET", 200, 0.002)
    page = render([], {}, {}, LoopStats({}, None, alive=False), mine, NOW, peers=second.requests())
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(page)
        for s in f.samples
    }
    assert (
        values[("metasched_http_requests_total", (("code", "200"), ("method", "GET"), ("path", "/ping")))]
        == 2
    )

    old = msgspec.json.decode((tmp_path / "worker-0.json").read_bytes())
    old["written"] -= LOOP_REPORT_MAX_AGE_S + 5
    (tmp_path / "worker-0.json").write_bytes(msgspec.json.encode(old))
    assert (second.loop()[1] or "").startswith("collecting worker silent for 15s")
    (tmp_path / "worker-0.json").write_text("{half")
    assert second.requests() == []  # unreadable: left out, and logged
