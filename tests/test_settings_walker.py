"""The every-error walk behind `config check`: msgspec stops at the first error, the walk reports all."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from metasched.domain.errors import ConfigError
from metasched.settings import load_config
from metasched.settings.assemble import ConfigFile
from metasched.settings.walker import decode


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    prefix = f"{path}: "
    assert all(p.startswith(prefix) for p in info.value.problems)
    return [p.removeprefix(prefix) for p in info.value.problems]


def test_several_problems_in_one_file_are_several_lines_in_file_order(tmp_path: Path) -> None:
    text = (
        "collect: {fanout: 2000, jitter: 2}\n"
        "rank: {max_state_age: -1, weights: {tpv_weight: -0.5}}\n"
        "destinations:\n"
        "  - {id: a, scheduler: slurm, host: h1}\n"
        "  - {id: b, scheduler: slurm, host: h2}\n"
        "  - {id: c, scheduler: sge, host: h3, port: 0, sge: {cell: '-x'}}\n"
        "serve: {port: http, open_endpoints: [/healthz, /admin]}\n"
    )
    assert problems_of(tmp_path, text) == [
        "collect.fanout: must be an integer 1-1024, got 2000",
        "collect.jitter: must be a number between 0 and 1, got 2",
        "rank.max_state_age: must be a number > 0, got -1",
        "rank.weights.tpv_weight: must be a number >= 0, got -0.5",
        "destinations[2].port: must be an integer 1-65535, got 0",
        "destinations[2].sge.cell: must not contain whitespace or start with '-', got '-x'",
        "serve.port: must be an integer 1-65535, got 'http'",
        "serve.open_endpoints[1]: must be one of /healthz, /metrics, /v1/status, /v1/rank, /process_data,"
        " /docs, /openapi.json, got '/admin'",
    ]


def test_unknown_keys_at_every_level_name_the_likely_key(tmp_path: Path) -> None:
    text = (
        "colect: {}\n"
        "serve: {prot: 8000}\n"
        "destinations:\n"
        "  - {id: a, scheduler: sge, host: h, sge: {bindir: /opt/sge/bin, queue: all.q}, conect_timeout: 3}\n"
        "influxdb: {url: 'http://i:8086', database: g, tiemout: 3}\n"
        "objectstores: {files: {latitude: 0, longitude: 0, altitude: 9}}\n"
    )
    assert problems_of(tmp_path, text) == [
        "colect: unknown key (did you mean 'collect'?)",
        "serve.prot: unknown key (did you mean 'port'?)",
        "destinations[0].sge.bindir: unknown key (did you mean 'bin_dir'?)",
        "destinations[0].sge.queue: unknown key (allowed: bin_dir, root, cell)",
        "destinations[0].conect_timeout: unknown key (did you mean 'connect_timeout'?)",
        "influxdb.tiemout: unknown key (did you mean 'timeout'?)",
        "objectstores.files.altitude: unknown key (did you mean 'latitude'?)",
    ]


def test_items_left_out_keep_their_index_in_later_paths(tmp_path: Path) -> None:
    """A broken item is left out of the decoded list; problems of the items after it still name their
    place in the file, and so do the cross-field rules that run on what decoded."""
    text = (
        "destinations:\n"
        "  - {id: a, scheduler: slurm}\n"
        "  - {id: b, scheduler: pbs, host: h}\n"
        "  - {id: c, scheduler: slurm, host: h, port: 70000, sge: {root: /opt/sge}}\n"
        "policies:\n"
        "  - {name: shared, destinations: [c, 7, a]}\n"
    )
    assert problems_of(tmp_path, text) == [
        "destinations[0].host: is required",
        "destinations[1].scheduler: must be one of slurm, node, sge, htcondor, yarn, got 'pbs'",
        "destinations[2].port: must be an integer 1-65535, got 70000",
        "destinations[2].sge: only applies to scheduler sge (this destination is slurm)",
        "policies[0].destinations[1]: must be a destination id, got 7",
        "policies[0].destinations[2]: unknown destination 'a'",
    ]


def test_nested_shapes_and_types(tmp_path: Path) -> None:
    text = (
        "ssh: [user, x]\n"
        "destinations:\n"
        "  - {id: a, scheduler: yarn, host: h, yarn_local_dirs: [/data, tmp], env: {A: [1], 'B C': x}}\n"
        "influxdb: {url: 'http://i:8086', database: g, version: 3,"
        " measurements: {queue_by_destination: {columns: {count: {x: 1}}, enabled: [true]}}}\n"
    )
    assert problems_of(tmp_path, text) == [
        "ssh: must be a mapping, got a list",
        "destinations[0].yarn_local_dirs[1]: must be an absolute directory path, got 'tmp'",
        "destinations[0].env.A: must be a string, got a list",
        "destinations[0].env.B C: is not a valid environment variable name",
        "influxdb.version: must be 1 or 2, got 3",
        "influxdb.measurements.queue_by_destination.columns.count: must be a single value, got a mapping",
        "influxdb.measurements.queue_by_destination.enabled: must be a single value or a mapping, got a list",
    ]


def test_numbers_must_be_finite_and_booleans_are_not_numbers(tmp_path: Path) -> None:
    text = "collect: {interval: .inf, fanout: true}\nrank: {ledger_ttl: .nan}\n"
    assert problems_of(tmp_path, text) == [
        "collect.interval: must be a number > 0, got inf",
        "collect.fanout: must be an integer 1-1024, got true",
        "rank.ledger_ttl: must be a number > 0, got nan",
    ]


def test_null_means_the_default_on_both_paths(tmp_path: Path) -> None:
    """A null value fails msgspec's fast path; the walk then decodes the file with no problem."""
    plain = tmp_path / "plain.yml"
    plain.write_text("destinations:\n  - {id: a, scheduler: slurm, host: h}\n")
    nulls = tmp_path / "nulls.yml"
    nulls.write_text(
        "collect:\nrank:\n  ledger:\ndestinations:\n  - id: a\n    scheduler: slurm\n    host: h\n    port:\n"
    )
    a, b = load_config(plain, {}), load_config(nulls, {})
    assert (a.collect, a.rank, a.destinations) == (b.collect, b.rank, b.destinations)


def test_the_walk_agrees_with_msgspec_on_what_it_accepts() -> None:
    raw = {"destinations": [{"id": "a", "scheduler": "node", "host": "local", "env": {"N": 3}}]}
    fast = decode(raw, ConfigFile)
    assert fast.problems == [] and fast.value == msgspec.convert(raw, ConfigFile)
    walked = decode({**raw, "database": None}, ConfigFile)  # null: msgspec refuses, the walk decodes
    assert walked.problems == [] and walked.value == fast.value


def test_seed_indices_name_their_range(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(
        '{"cluster": {"policy": {"name": "shared", "high_priority": -1}, "nodes": [{"ip": "10.0.0.1"}],'
        ' "schedulers": [{"name": "Slurm", "master": -1}, {"name": "SGE", "master": "x"}]}}'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert [p.removeprefix(f"{path}: ") for p in info.value.problems] == [
        "cluster.schedulers[0].master: must be an index into cluster.nodes (0-0), got -1",
        "cluster.schedulers[1].master: must be an index into cluster.nodes, got 'x'",
        "cluster.policy.high_priority: must be an index into cluster.schedulers (0-1), got -1",
    ]
