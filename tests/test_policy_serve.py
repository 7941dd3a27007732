"""``PUT /v1/policy`` / ``GET /v1/policy`` on a real ``metasched serve`` subprocess with a SQLite store:
the token is required, the change is persisted (the CLI and rank see it), bad bodies are 422, and a
server without a token refuses changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.infra.serve import Serve, base_env, cli, start_serve, write_config

GROUP: dict[str, Any] = {
    "destinations": [
        {"id": "slurm_a", "scheduler": "slurm", "host": "local"},
        {"id": "sge_b", "scheduler": "sge", "host": "local"},
    ],
    "policies": [
        {"name": "shared", "destinations": ["slurm_a", "sge_b"], "weights": {"slurm_a": 40, "sge_b": 60}}
    ],
}


def _config(tmp_path: Path, token: str | None) -> Path:
    data = {**GROUP, "database": str(tmp_path / "state.db")}
    if token is not None:
        data["serve"] = {"token": token}
    return write_config(tmp_path / "config.yml", data)


def test_put_policy_needs_the_token_and_persists(tmp_path: Path, servers: list[Serve]) -> None:
    config = _config(tmp_path, "s3cret")
    server = start_serve(tmp_path, config, "--no-collect")
    servers.append(server)
    body = {"name": "best_effort", "group": "sge_b", "high_priority": "sge_b"}
    with server.client() as anon:
        assert anon.put("/v1/policy", json=body).status_code == 401
    with server.client("wrong") as bad:
        assert bad.put("/v1/policy", json=body).status_code == 401
    with server.client("s3cret") as http:
        answer = http.put("/v1/policy", json=body)
        assert answer.status_code == 200, answer.text
        new = answer.json()["new"]
        assert (new["name"], new["source"], new["previous"]) == ("best_effort", "runtime", "shared")
        assert new["changed_by"] == "api 127.0.0.1"
        assert http.get("/v1/policy").json()["policies"][0]["name"] == "best_effort"

        for bad_body, needle in [
            (b"{nope", "not JSON"),
            (b'{"name": "fair"}', "name: must be one of"),
            (b'{"name": "shared", "group": "x"}', "group: no node group contains destination 'x'"),
            (b'{"name": "shared", "colour": "red"}', "colour: unknown field"),
            (b'{"group": "sge_b"}', "name: is required"),
        ]:
            r = http.put("/v1/policy", content=bad_body)
            assert r.status_code == 422 and needle in r.json()["detail"], (bad_body, r.text)

        # rank through serve sees the runtime policy: sge_b has priority now
        ranked = http.post(
            "/v1/rank", json={"job": {"tool_id": "t"}, "destinations": [{"id": "slurm_a"}, {"id": "sge_b"}]}
        ).json()
        assert ranked["sorted_destinations"] == ["sge_b", "slurm_a"]
    assert "policy of group slurm_a changed by api 127.0.0.1 at " in server.text()
    assert ": shared -> best_effort (high_priority None -> sge_b)" in server.text()

    # persisted in the store: the CLI shows it
    shown = cli(["policy", "show", "--json", "-c", str(config)], base_env(tmp_path))
    assert json.loads(shown.stdout)["policies"][0]["source"] == "runtime"


def test_put_policy_refused_without_a_configured_token(tmp_path: Path, servers: list[Serve]) -> None:
    server = start_serve(tmp_path, _config(tmp_path, None), "--no-collect", env=base_env(tmp_path))
    servers.append(server)
    with server.client() as http:
        r = http.put("/v1/policy", json={"name": "exclusive"})
        assert r.status_code == 403 and "serve.token" in r.json()["detail"]
        assert http.get("/v1/policy").json()["policies"][0]["name"] == "shared"
