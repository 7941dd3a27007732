"""Decoding with every problem: msgspec's own conversion first, a schema-driven walk only on failure.

msgspec stops at the first error. When it does, ``decode`` walks the document along
``msgspec.inspect.type_info`` of the target: each field is converted on its own, unknown keys are
named with a suggestion, and what fails is dropped (a default takes its place, a list item or a
struct missing a required field is left out) so that the rest can still be checked and decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import msgspec
import msgspec.inspect as mi

from metasched.settings.problems import KeyPath, Problem, describe, mismatch, suggest

T = TypeVar("T")
_ITEM = TypeVar("_ITEM")
_BAD: Any = object()  # a value the walk could not use


class Decoded(Generic[T]):
    """The decoded value (None when unusable), the problems found, and which list items were kept."""

    def __init__(self, value: T | None, problems: list[Problem], raw: Any, kept: dict[KeyPath, list[int]]):
        self.value = value
        self.problems = problems
        self.raw = raw
        self.kept = kept  # list path -> indices (in the file) of the items that decoded

    def items(self, path: KeyPath, seq: Sequence[_ITEM]) -> Iterator[tuple[KeyPath, _ITEM]]:
        """Each decoded item with its path in the file (items the walk left out keep their index)."""
        kept = self.kept.get(path)
        for n, item in enumerate(seq):
            yield (*path, kept[n] if kept is not None else n), item

    def failed(self, path: KeyPath) -> bool:
        """Whether a problem was found at or under ``path`` (a rule then has nothing to add)."""
        return any(p.path[: len(path)] == path for p in self.problems)

    def given(self, path: KeyPath) -> bool:
        """Whether the file sets ``path`` (to something other than null)."""
        return self.at(path) is not None

    def length(self, path: KeyPath) -> int:
        """How many items the file's list at ``path`` has, decodable or not."""
        node = self.at(path)
        return len(node) if isinstance(node, list) else 0

    def at(self, path: KeyPath) -> Any:
        """The file's value at ``path``, None when absent."""
        node = self.raw
        for part in path:
            if isinstance(part, int):
                node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            else:
                node = node.get(part) if isinstance(node, dict) else None
        return node


def decode(raw: Any, cls: type[T]) -> Decoded[T]:
    try:
        return Decoded(msgspec.convert(raw, cls, strict=True), [], raw, {})
    except msgspec.ValidationError:
        pass
    walk = _Walk()
    repaired = walk.value(mi.type_info(cls), raw, ())
    if repaired is _BAD:
        return Decoded(None, walk.problems, raw, walk.kept)
    try:
        value = msgspec.convert(repaired, cls, strict=True)
    except msgspec.ValidationError as exc:  # the walk accepted what msgspec refuses: report, never hide
        walk.problems.append(Problem((), str(exc)))
        return Decoded(None, walk.problems, raw, walk.kept)
    return Decoded(value, walk.problems, raw, walk.kept)


class _Walk:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.kept: dict[KeyPath, list[int]] = {}

    def value(self, t: mi.Type, raw: Any, path: KeyPath) -> Any:
        t, extra = _unwrap(t, {})
        if isinstance(t, mi.UnionType):
            t, extra = _unwrap(self._member(t, raw), extra)
        if isinstance(t, mi.StructType):
            return self.struct(t, raw, path)
        if isinstance(t, mi.ListType | mi.VarTupleType):
            return self.sequence(t.item_type, raw, path)
        if isinstance(t, mi.DictType):
            return self.mapping(t, raw, path)
        try:
            return msgspec.convert(raw, _annotation(t), strict=True)
        except msgspec.ValidationError:
            self.problems.append(Problem(path, mismatch(t, extra, raw)))
            return _BAD

    @staticmethod
    def _member(t: mi.UnionType, raw: Any) -> mi.Type:
        """The member a value should be read as: the container a mapping or list fits, else the
        union of the scalar members (null is valid only when the union allows it)."""
        members = [m for m in t.types if raw is None or not isinstance(m, mi.NoneType)]
        for member in members:
            inner = member.type if isinstance(member, mi.Metadata) else member
            if isinstance(raw, dict) and isinstance(inner, mi.StructType | mi.DictType):
                return member
            if isinstance(raw, list) and isinstance(inner, mi.ListType | mi.VarTupleType):
                return member
        scalars = tuple(m for m in members if _annotation(m) is not None)
        return mi.UnionType(scalars) if len(scalars) > 1 else scalars[0]

    def _keys(self, raw: dict[Any, Any], path: KeyPath) -> bool:
        bad = [k for k in raw if not isinstance(k, str)]
        for key in bad:
            self.problems.append(Problem(path, f"keys must be strings, got {describe(key)}"))
        return not bad

    def struct(self, t: mi.StructType, raw: Any, path: KeyPath) -> Any:
        if not isinstance(raw, dict):
            self.problems.append(Problem(path, f"must be a mapping, got {describe(raw)}"))
            return _BAD
        if not self._keys(raw, path):
            return _BAD
        fields = {f.encode_name: f for f in t.fields}
        out: dict[str, Any] = {}
        broken = False
        for key, value in raw.items():
            field = fields.get(key)
            if field is None:
                self.problems.append(Problem((*path, key), "unknown key" + suggest(key, list(fields))))
            elif value is not None:  # null: as if not given
                converted = self.value(field.type, value, (*path, key))
                if converted is _BAD:
                    broken |= field.required
                else:
                    out[key] = converted
        for field in t.fields:
            if field.required and raw.get(field.encode_name) is None:
                self.problems.append(Problem((*path, field.encode_name), "is required"))
                broken = True
        return _BAD if broken else out

    def sequence(self, item_type: mi.Type, raw: Any, path: KeyPath) -> Any:
        if not isinstance(raw, list):
            self.problems.append(Problem(path, f"must be a list, got {describe(raw)}"))
            return _BAD
        out: list[Any] = []
        kept: list[int] = []
        for i, item in enumerate(raw):
            converted = self.value(item_type, item, (*path, i))
            if converted is not _BAD:
                out.append(converted)
                kept.append(i)
        if len(kept) != len(raw):
            self.kept[path] = kept
        return out

    def mapping(self, t: mi.DictType, raw: Any, path: KeyPath) -> Any:
        if not isinstance(raw, dict):
            self.problems.append(Problem(path, f"must be a mapping, got {describe(raw)}"))
            return _BAD
        if not self._keys(raw, path):
            return _BAD
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if self.value(t.key_type, key, (*path, key)) is _BAD:
                continue
            converted = self.value(t.value_type, value, (*path, key))
            if converted is not _BAD:
                out[key] = converted
        return out


def _unwrap(t: mi.Type, extra: dict[str, Any]) -> tuple[mi.Type, dict[str, Any]]:
    """The type under its ``Meta`` annotations, and their ``extra`` (the innermost wins)."""
    while isinstance(t, mi.Metadata):
        extra = {**extra, **(t.extra or {})}
        t = t.type
    return t, extra


def _annotation(t: mi.Type) -> Any:
    """The annotation of a scalar type, to convert one value with msgspec; None for containers."""
    if isinstance(t, mi.Metadata):
        return _annotation(t.type)
    if isinstance(t, mi.IntType | mi.FloatType):
        bounds: dict[str, Any] = {"ge": t.ge, "gt": t.gt, "le": t.le, "lt": t.lt}
        bounds["multiple_of"] = t.multiple_of
        meta = msgspec.Meta(**{k: v for k, v in bounds.items() if v is not None})
        return Annotated[int if isinstance(t, mi.IntType) else float, meta]
    if isinstance(t, mi.StrType):
        lengths: dict[str, Any] = {"min_length": t.min_length, "max_length": t.max_length}
        lengths["pattern"] = t.pattern
        return Annotated[str, msgspec.Meta(**{k: v for k, v in lengths.items() if v is not None})]
    if isinstance(t, mi.BoolType):
        return bool
    if isinstance(t, mi.NoneType):
        return None.__class__
    if isinstance(t, mi.LiteralType):
        return Literal[t.values]
    if isinstance(t, mi.AnyType):
        return Any
    if isinstance(t, mi.UnionType):
        members = tuple(_annotation(m) for m in t.types)
        return None if None in members else Union[members]  # noqa: UP007
    return None
