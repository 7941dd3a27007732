"""Reading a config file into plain data: YAML or JSON, refusing a key given twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from metasched.settings.problems import Problem


def _duplicate_checking_loader() -> type[yaml.SafeLoader]:
    base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type,misc]
        """Refuses a key given twice in one mapping; plain YAML silently keeps the last one."""

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeConstructor reports it itself
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
            result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
            return result

    return Loader


class _DuplicateKey(ValueError):
    pass


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_document(path: Path) -> tuple[Any, list[Problem]]:
    """The file's data, or None and the one problem that stopped reading it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return None, [Problem((), f"cannot read: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return None, [Problem((), "cannot read: not UTF-8 text")]
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        import json  # only seed-2 cluster files are JSON; rank's YAML configs never pay for it

        try:
            return json.loads(text, object_pairs_hook=_json_pairs), []
        except _DuplicateKey as exc:
            return None, [Problem((), str(exc))]
        except json.JSONDecodeError as exc:
            if path.suffix.lower() == ".json":
                return None, [Problem((), f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}")]
            # Not JSON after all: a YAML flow mapping; the YAML parser has the last word.
    try:
        data = yaml.load(text, Loader=_duplicate_checking_loader())  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({exc.context})" if exc.context else ""
        return None, [Problem((), f"{where}invalid YAML: {exc.problem}{context}")]
    except yaml.YAMLError as exc:
        return None, [Problem((), f"invalid YAML: {exc}")]
    if data is None:
        return None, [Problem((), "is empty (expected a mapping of settings)")]
    return data, []
