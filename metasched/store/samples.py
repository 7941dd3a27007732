"""The newest finished-job samples of one (destination, tool_key), packed for ``tool_history`` (schema v4).

rank needs, per destination, the medians of the newest finished jobs of one tool over every
``tool_key`` that matches it (Galaxy may append the user to the tool in job names). Reading those
rows one by one is most of rank's time at a thousand destinations; one packed row per
(destination, tool_key) is read and unpacked in C instead. The samples are the raw values, so the
medians are still taken over the matched jobs themselves, never medians of medians.

Format (frozen with schema v4): little-endian IEEE doubles, four per job, newest first:
end time (seconds since the epoch, naive UTC), history row id, queue_s, run_s; NaN for a missing
duration. Ordering by (end time, id) descending is the order ``Store.tool_times`` defines.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable
from datetime import datetime

SAMPLES = 200  # jobs kept per (destination, tool_key): Store.tool_times' default limit
_EPOCH = datetime(1970, 1, 1)
_NAN = math.nan

Sample = tuple[float, float, float | None, float | None]  # end (epoch s), id, queue_s, run_s


def end_seconds(end: datetime) -> float:
    """A naive UTC end time as epoch seconds (microseconds stay distinct until 2106)."""
    return (end - _EPOCH).total_seconds()


def pack(samples: Iterable[Sample]) -> bytes:
    """Samples newest first -> the stored bytes."""
    values = array("d")
    for end, ident, queue_s, run_s in samples:
        values.extend((end, ident, _NAN if queue_s is None else queue_s, _NAN if run_s is None else run_s))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def unpack(blob: bytes | memoryview) -> array[float]:
    """The stored bytes (a memoryview from PostgreSQL's driver) -> a flat array of
    (end, id, queue_s, run_s, end, id, ...), newest first."""
    values = array("d")
    values.frombytes(blob)
    if sys.byteorder != "little":
        values.byteswap()
    return values
