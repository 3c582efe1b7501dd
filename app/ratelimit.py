"""Rate limits per API key and per client address, counted in Redis.

The `limits` package's moving window, stored in the API's own Redis (the connection
pool RQ uses), so every API process on every machine counts against the same windows.
A limit is a string such as "1200/minute" or "20/second;1200/minute"; "" switches it
off. When Redis does not answer, requests are let through (the limiter fails open:
the queue itself answers 503 then), the limiter is skipped for PAUSE_AFTER_ERROR_S (so
requests that need no Redis do not each wait for its connect timeout), and a warning is
logged at most once a minute.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

KEY_PREFIX = "zerounlearn:ratelimit"
"""Prefix of the Redis keys that hold the windows."""
IPV6_PREFIX = 64
"""IPv6 clients are counted per /64: one host usually holds a whole /64."""
WARN_EVERY_S = 60.0
PAUSE_AFTER_ERROR_S = 5.0


@dataclass(frozen=True)
class Verdict:
    """A refused request: which limit, and the seconds until it lets a request through."""

    limit: str
    retry_after_s: int


def address_bucket(host: str | None) -> str:
    """The identifier an address is counted under: IPv4 as is, IPv6 by its /64."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


class RateLimiter:
    """Checks and counts requests against the per-key and per-address limits."""

    def __init__(self, redis: Redis, per_key: str, per_address: str) -> None:
        storage = RedisStorage("redis://", connection_pool=redis.connection_pool,
                               key_prefix=KEY_PREFIX)
        self.limiter = MovingWindowRateLimiter(storage)
        self.per_key: list[RateLimitItem] = parse_many(per_key) if per_key else []
        self.per_address: list[RateLimitItem] = parse_many(per_address) if per_address else []
        self._warned_at = -math.inf
        self._paused_until = -math.inf

    @property
    def enabled(self) -> bool:
        return bool(self.per_key or self.per_address)

    def hit_key(self, key_id: str) -> Verdict | None:
        """Count a request of API key `key_id`; a Verdict when it is over a limit."""
        return self._hit(self.per_key, "key", key_id)

    def hit_address(self, host: str | None) -> Verdict | None:
        """Count a request from client address `host`; a Verdict when over a limit."""
        return self._hit(self.per_address, "address", address_bucket(host))

    def _hit(self, items: list[RateLimitItem], kind: str, ident: str) -> Verdict | None:
        if not items or time.monotonic() < self._paused_until:
            return None
        try:
            for item in items:
                if not self.limiter.hit(item, kind, ident):
                    stats = self.limiter.get_window_stats(item, kind, ident)
                    wait = max(1, math.ceil(stats.reset_time - time.time()))
                    return Verdict(str(item), wait)
        except RedisError as exc:
            now = time.monotonic()
            self._paused_until = now + PAUSE_AFTER_ERROR_S
            if now - self._warned_at > WARN_EVERY_S:
                self._warned_at = now
                logger.warning("rate limits not enforced: Redis unavailable (%s)",
                               type(exc).__name__)
        return None
