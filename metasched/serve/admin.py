"""Operator writes: disabling and enabling a destination (``metasched disable``/``enable``).

A disable lives in the destination's row (``disabled_reason``/``disabled_until``), which every
DestinationSummary carries: rank marks the destination infeasible with the reason until it is enabled
or the time passes, status shows it, and a collect never clears it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from metasched.errors import InputError
from metasched.store import Store, models

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_REASON = "disabled by an operator"


def parse_until(text: str, now: datetime) -> datetime:
    """``--until``: a duration from now (``90m``, ``2h``, ``1d12h``) or an ISO 8601 time (UTC unless it
    names a zone). Raises InputError naming the option."""
    value = text.strip()
    if value and _DURATION.sub("", value).strip() == "":
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(value))
        if seconds <= 0:
            raise InputError(f"--until: {text!r} is not in the future")
        return now + timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise InputError(
            f"--until: {text!r} is neither a duration (30m, 2h, 1d) nor an ISO 8601 time (2026-12-24T08:00Z)"
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= now:
        raise InputError(f"--until: {when.isoformat()} is not in the future")
    return when


class AdminStore(Store):
    """The Store plus the one write operators make by hand."""

    def set_disabled(self, dest_id: str, reason: str | None, until: datetime | None) -> bool:
        """Disable (``reason`` given) or enable (``reason`` None) ``dest_id``; False when no such row.

        ``until`` None means until enabled again. Destinations are rows once a collect (or
        ``ensure_destination``) has seen them.
        """
        D = models.Destination
        stored_until = until.astimezone(UTC).replace(tzinfo=None) if until is not None else None
        with self._write_tx():
            changed = self._q(
                D.update(disabled_reason=reason, disabled_until=stored_until if reason else None).where(
                    D.id == dest_id
                )
            ).execute()
        return bool(changed)

    def ensure_destination(self, dest_id: str, scheduler: str, host: str) -> None:
        """A row for a configured destination not collected yet, so it can be disabled before then."""
        with self._write_tx():
            self._q(
                models.Destination.insert(id=dest_id, scheduler=scheduler, host=host).on_conflict_ignore()
            ).execute()
