"""Galaxy's cluster job names, so metasched learns per-tool queue/run times itself.

Galaxy's DRMAA/Slurm runners name jobs ``g<job id>_<tool old_id>[_<user>]`` and replace every
character outside ``[A-Za-z0-9_]`` with ``_``. The tool and user parts cannot be told apart
(both may contain ``_``), so the store keeps the whole tail as ``tool_key`` and a lookup for a
tool matches ``key`` or ``key_*`` (see ``tool_key_prefix``).
"""

from __future__ import annotations

import re

_NAME = re.compile(r"g(\d+)_([A-Za-z0-9_]+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def parse_galaxy_job_name(name: str) -> tuple[int, str] | None:
    """``g123_bowtie2_alice_example_org`` -> (123, "bowtie2_alice_example_org"); None if not that shape."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2)


def tool_key(tool_id: str) -> str:
    """The part of a Galaxy tool id that appears in job names.

    Tool Shed ids ``host/repos/owner/repo/tool/version`` use the tool's short (old) id; versions
    are not in job names. ``cat1`` stays ``cat1``.
    """
    parts = tool_id.split("/")
    short = parts[-2] if "/repos/" in tool_id and len(parts) >= 2 else tool_id
    return _UNSAFE.sub("_", short)


def versionless(tool_id: str) -> str:
    """A Tool Shed id without its version (``host/repos/owner/repo/tool/1.2`` ->
    ``host/repos/owner/repo/tool``), so metrics of an older version still describe a new one;
    other ids are returned unchanged."""
    parts = tool_id.split("/")
    if "repos" in parts[1:2] and len(parts) >= 6:
        return "/".join(parts[:-1])
    return tool_id
