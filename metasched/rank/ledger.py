"""Recording a rank answer in the placement ledger (``metasched.store.placements``).

Every answered rank with a ``job.job_id`` records the first feasible destination and the prediction
behind it, so the ranks of a burst after it see that job queued there. The write never fails the
answer: a store that cannot take it (locked, read-only, missing) costs a warning, and stdout keeps
its shape. What happened is also returned as one line for ``--explain``.
"""

from __future__ import annotations

import logging
from datetime import datetime

from metasched.domain.destination import PlacementEntry
from metasched.rank.model import Outcome
from metasched.rank.request import RankRequest
from metasched.settings import Config
from metasched.store import Store
from metasched.store.placements import record_placement

log = logging.getLogger(__name__)


def job_key(req: RankRequest) -> str | None:
    """The Galaxy job id as the ledger keys it (text); None when the request has none."""
    if req.job_id is None or req.job_id == "":
        return None
    return str(req.job_id)


def record(
    req: RankRequest, outcome: Outcome, config: Config, store: Store | None, now: datetime, warn: list[str]
) -> str:
    """Record ``req``'s placement if there is one to record; a failure appends to ``warn``.

    Returns what was done, for ``--explain``.
    """
    if not config.rank.ledger:
        return "placement not recorded: the ledger is off (rank.ledger: false)"
    job_id = job_key(req)
    if job_id is None:
        return "placement not recorded: the request has no job.job_id"
    best = next((r for r in outcome.ranked if r.feasible), None)
    if best is None:
        return f"placement of job {job_id} not recorded: no feasible destination"
    if store is None:
        return f"placement of job {job_id} not recorded: no state store to write to"
    job = req.job
    entry = PlacementEntry(
        job_id,
        best.id,
        job.tool_id,
        job.cores,
        job.mem_mb,
        job.gpus,
        now,
        best.staging_s,
        best.queue_s,
        best.run_s,
    )
    try:
        record_placement(store, entry)
    except Exception as exc:  # locked, read-only, broken: the answer matters more than its record
        log.debug("recording the placement failed", exc_info=True)
        warn.append(
            f"placement of job {job_id} not recorded ({' '.join(str(exc).split()) or type(exc).__name__}): "
            "ranks after it will not count it"
        )
        return f"placement of job {job_id} not recorded: store not writable"
    return f"placement of job {job_id} recorded: {best.id}"
