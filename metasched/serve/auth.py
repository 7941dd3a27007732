"""Bearer-token check for ``metasched serve`` (constant-time, so timing does not leak the token)."""

from __future__ import annotations

import hmac


def authorized(header: bytes | None, token: str | None) -> bool:
    """True when no token is configured, or ``header`` is ``Bearer <token>``."""
    if token is None:
        return True
    if header is None:
        return False
    scheme, _, value = header.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))
