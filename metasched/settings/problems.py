"""Problems as ``FILE: key.path: message`` lines: their paths, wording and order.

Problems are sorted by where they sit in the file (key order, list index), so ``config check`` reads
top to bottom; a rule about a whole block (duplicate ids, weight sums) comes after the block's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec.inspect as mi

from metasched.settings.types import MAX_FLOAT

PathPart = str | int
KeyPath = tuple[PathPart, ...]
_LATE = 1 << 40  # sorts after every position inside the anchor
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Problem(NamedTuple):
    path: KeyPath
    message: str
    anchor: KeyPath | None = None  # where it sorts; None: at its path
    late: bool = False  # after everything inside the anchor


def dotted(path: Sequence[PathPart]) -> str:
    """``("destinations", 2, "port")`` -> ``destinations[2].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


def render(label: str, problem: Problem) -> str:
    path = dotted(problem.path)
    return f"{label}: {path}: {problem.message}" if path else f"{label}: {problem.message}"


def in_file_order(problems: Iterable[Problem], raw: Any) -> list[Problem]:
    return sorted(problems, key=lambda p: _position(raw, p))


def _position(raw: Any, problem: Problem) -> list[int]:
    key: list[int] = []
    node = raw
    for part in problem.path if problem.anchor is None else problem.anchor:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            key.append(part)
            node = node[part]
        elif isinstance(node, dict) and part in node:
            key.append(list(node).index(part))
            node = node[part]
        else:
            key.append(-1)
            node = None
    if problem.late:
        key.append(_LATE)
    return key


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def suggest(key: str, allowed: Sequence[str]) -> str:
    """Name the likely intended key; difflib is imported only when there is a mistake to explain."""
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(allowed)})"


def mismatch(t: mi.Type, extra: dict[str, Any], value: Any) -> str:
    """What a value that does not fit type ``t`` should have been, in the schema's own terms."""
    error = extra.get("error")
    if isinstance(t, mi.StrType):
        if not isinstance(value, str) and not extra.get("any_value"):
            return f"must be a string, got {describe(value)}"
        if isinstance(value, str) and not value.strip():
            return "must not be empty"
        if isinstance(value, str) and CONTROL.search(value):
            return "must not contain control characters"
        phrase = error or f"must match {t.pattern}"
    else:
        phrase = error or _expected(t)
    return phrase if extra.get("bare") else f"{phrase}, got {describe(value)}"


def _expected(t: mi.Type) -> str:
    if isinstance(t, mi.BoolType):
        return "must be true or false"
    if isinstance(t, mi.IntType):
        lo: float | None = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        hi: float | None = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
        if lo is not None and hi is not None:
            return f"must be an integer {lo}-{hi}"
        return f"must be an integer >= {lo}" if lo is not None else "must be an integer"
    if isinstance(t, mi.FloatType):
        hi = t.le if t.le is not None and t.le < MAX_FLOAT else None
        if t.gt == 0:
            return "must be a number > 0"
        if t.ge is not None and hi is not None:
            return f"must be a number between {number(t.ge)} and {number(hi)}"
        return f"must be a number >= {number(t.ge)}" if t.ge is not None else "must be a number"
    if isinstance(t, mi.LiteralType):
        if all(isinstance(v, int) for v in t.values):
            *rest, last = (str(v) for v in t.values)
            return f"must be {', '.join(rest)} or {last}" if rest else f"must be {last}"
        return f"must be one of {', '.join(str(v) for v in t.values)}"
    if isinstance(t, mi.StructType | mi.DictType):
        return "must be a mapping"
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.TupleType):
        return "must be a list"
    return "has the wrong type"
