"""Where an API without authentication may listen: loopback only (python -m app and the
local stack both check it before they bind)."""

from __future__ import annotations

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def unauthenticated_bind_refusal(auth_enabled: bool, host: str) -> str | None:
    """The log line refusing to start, or None when binding `host` is allowed."""
    if auth_enabled or host in LOOPBACK_HOSTS:
        return None
    return (f"ZEROUNLEARN_AUTH=disabled is for development: refusing to listen on {host} "
            "(bind 127.0.0.1, or enable authentication)")
