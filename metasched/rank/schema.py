"""metasched/schemas/rank-{request,response}.json, generated from the Structs (rank.wire, rank.answer).

    python -m metasched.rank.schema          # rewrite the committed files
    python -m metasched.rank.schema --check  # exit 1 when one differs from what the Structs say

tests/test_rank_schema.py fails when a committed schema and the generated one differ. msgspec
writes each Struct as a ``$defs`` entry; only what Structs cannot say is added here: the roots'
identity, that one name of the job and of the destinations section is required, and which energy
components come together.
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from typing import Any

import msgspec

from metasched.rank.answer import ComponentsOut, RankResponseOut
from metasched.rank.wire import RankRequestIn

BASE_ID = "https://github.com/metasched/metasched/schemas/"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _one_line(node: Any) -> Any:
    """Docstrings become descriptions: one line each, as in the hand-written schema before."""
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "description" else _one_line(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node


def _rooted(kind: type, file: str, title: str, **extra: Any) -> dict[str, Any]:
    """msgspec's schema of ``kind`` with its own definition as the root, named ``title``."""
    defs: dict[str, Any] = msgspec.json.schema(kind)["$defs"]
    root = defs.pop(kind.__name__)
    root.pop("title", None)
    schema = {"$schema": DRAFT, "$id": BASE_ID + file, "title": title, **root, **extra}
    if defs:
        schema["$defs"] = defs
    return dict(_one_line(schema))


def request_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a rank request."""
    schema = _rooted(
        RankRequestIn,
        "rank-request.json",
        "metasched rank request",
        allOf=[
            {"oneOf": [{"required": ["job"]}, {"required": ["job_info"]}, {"required": ["static_job_info"]}]},
            {"oneOf": [{"required": ["destinations"]}, {"required": ["current_dest_info"]}]},
        ],
    )
    schema.pop("required", None)  # every section is optional to msgspec; allOf says which are not
    return schema


def response_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of rank's answer."""
    schema = _rooted(RankResponseOut, "rank-response.json", "metasched rank response")
    schema["$defs"][ComponentsOut.__name__]["dependentRequired"] = {
        "carbon_s": ["energy_kwh", "carbon_g_per_kwh", "co2_g"],
        "price_s": ["energy_kwh", "price_eur_per_mwh", "price_eur"],
    }
    return schema


SCHEMAS = {"rank-request.json": request_schema, "rank-response.json": response_schema}


def render(file: str) -> str:
    return json.dumps(SCHEMAS[file](), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    status = 0
    for file in SCHEMAS:
        path = files("metasched").joinpath("schemas", file)
        text = render(file)
        if "--check" not in argv:
            with open(str(path), "w", encoding="utf-8") as fh:
                fh.write(text)
        elif path.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"metasched/schemas/{file}: differs from the Structs; regenerate it\n")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
