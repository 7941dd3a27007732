"""metasched/schemas/rank-request.json, generated from the request's Structs (metasched.rank.wire).

    python -m metasched.rank.schema          # rewrite the committed file
    python -m metasched.rank.schema --check  # exit 1 when it differs from what the Structs say

tests/test_rank_schema.py fails when the committed schema and the generated one differ. msgspec
writes each Struct as a ``$defs`` entry; only what Structs cannot say is added here: the root's
identity and that one name of the job and of the destinations section is required.
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from typing import Any

import msgspec

from metasched.rank.wire import RankRequestIn

REQUEST_FILE = "rank-request.json"
SCHEMA_ID = "https://github.com/metasched/metasched/schemas/rank-request.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _one_line(node: Any) -> Any:
    """Docstrings become descriptions: one line each, as in the hand-written schema before."""
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "description" else _one_line(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node


def request_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a rank request."""
    generated = msgspec.json.schema(RankRequestIn)
    defs: dict[str, Any] = generated["$defs"]
    root = defs.pop(RankRequestIn.__name__)
    root.pop("required", None)  # every section is optional to msgspec; allOf below says which are not
    root.pop("title", None)
    schema = {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "metasched rank request",
        **root,
        "allOf": [
            {"oneOf": [{"required": ["job"]}, {"required": ["job_info"]}, {"required": ["static_job_info"]}]},
            {"oneOf": [{"required": ["destinations"]}, {"required": ["current_dest_info"]}]},
        ],
        "$defs": defs,
    }
    return dict(_one_line(schema))


def render() -> str:
    return json.dumps(request_schema(), indent=2, ensure_ascii=False) + "\n"


def committed() -> str:
    return files("metasched").joinpath("schemas", REQUEST_FILE).read_text(encoding="utf-8")


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if committed() != text:
            sys.stderr.write(f"metasched/schemas/{REQUEST_FILE}: differs from the Structs; regenerate it\n")
            return 1
        return 0
    path = files("metasched").joinpath("schemas", REQUEST_FILE)
    with open(str(path), "w", encoding="utf-8") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
