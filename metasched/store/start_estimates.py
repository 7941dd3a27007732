"""How start estimates are stored on the destination row (see ``metasched.domain.start_estimates``)."""

from __future__ import annotations

import json

from metasched.domain.start_estimates import StartEstimate


def encode(estimates: list[StartEstimate]) -> str | None:
    """Destination.start_estimates text; None when there are none (SGE, HTCondor, idle queues)."""
    if not estimates:
        return None
    return json.dumps([[e.cores, e.mem_mb, e.gpus, e.start, e.estimated_at] for e in estimates])


def decode(text: str | None) -> tuple[StartEstimate, ...]:
    """The stored text back; anything unreadable is no estimate (rank never fails over it)."""
    if not text:
        return ()
    try:
        return tuple(
            StartEstimate(int(c), int(m), int(g), float(s), float(e)) for c, m, g, s, e in json.loads(text)
        )
    except (ValueError, TypeError):
        return ()
