"""Fixed-window counters on the shared cache, for the API's per-key limit and the dashboard's login
and signup throttles.

``cache.add`` creates a window's counter and ``cache.incr`` bumps it: Redis ``INCR`` is atomic, so
concurrent requests in every server process see one count and never more than ``limit`` pass
(a read-then-write counter lets a burst through). A cache outage fails open by default (the
request is served, the outage logged): losing the throttle for a while beats locking everyone
out; callers that guard money pass ``fail_open=False``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest

from callmissed.rates import Rate, parse_rate

__all__ = ["Decision", "Rate", "client_ip", "hit", "parse_rate", "reset"]

logger = logging.getLogger(__name__)

# The time source of every window; tests replace it to stand still at a chosen instant.
clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Decision:
    allowed: bool
    count: int
    retry_after: int  # seconds until the window that refused this request ends


def _key(scope: str, ident: str, bucket: int) -> str:
    # Hashed: usernames and addresses may hold characters some cache backends refuse in keys.
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"rl:{scope}:{digest}:{bucket}"


def _window(rate: Rate, now: float | None) -> tuple[int, float]:
    at = clock() if now is None else now
    bucket = int(at // rate.window_seconds)
    return bucket, (bucket + 1) * rate.window_seconds - at


def hit(scope: str, ident: str, rate: Rate, *, now: float | None = None, fail_open: bool = True) -> Decision:
    """Count one event for ``ident`` in the current window; allowed while the count is within the limit."""
    bucket, remaining = _window(rate, now)
    key = _key(scope, ident, bucket)
    retry_after = max(1, math.ceil(remaining))
    timeout = retry_after + 1  # the key outlives its window by a moment, never by a whole window
    try:
        count = _count(key, timeout)
    except Exception as error:  # any backend's outage (connection refused, timeout, …)
        _log_outage(scope, error, fail_open=fail_open)
        return Decision(allowed=fail_open, count=0, retry_after=retry_after)
    return Decision(allowed=count <= rate.limit, count=count, retry_after=retry_after)


def _count(key: str, timeout: int) -> int:
    backend = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(backend, RedisCache):
        # One round trip on every API request instead of three (add, then incr's exists and incr):
        # create the window's counter if absent, then bump it, in one MULTI (the counter cannot
        # expire between the two and be recreated without a TTL). Django stores an int as a plain
        # Redis integer, so the cache API reads the same counter.
        redis_key = backend.make_and_validate_key(key)
        client = backend._cache.get_client(redis_key, write=True)
        pipe = client.pipeline(transaction=True)
        pipe.set(redis_key, 0, ex=timeout, nx=True)
        pipe.incr(redis_key)
        return int(pipe.execute()[1])
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr: this event opens the window again
        cache.add(key, 1, timeout=timeout)
        return 1


# An outage fails every request: say so once a minute per scope, not once per request.
OUTAGE_LOG_EVERY_SECONDS = 60.0
_outage_logged_at: dict[str, float] = {}


def _log_outage(scope: str, error: Exception, *, fail_open: bool) -> None:
    now = time.monotonic()
    if now - _outage_logged_at.get(scope, -math.inf) < OUTAGE_LOG_EVERY_SECONDS:
        return
    _outage_logged_at[scope] = now
    logger.warning(
        "rate limit %s: cache unavailable, %s requests (%r)", scope, "allowing" if fail_open else "refusing", error
    )


def reset(scope: str, ident: str, rate: Rate, *, now: float | None = None) -> None:
    """Forget ``ident``'s count in the current window (a successful login clears its failures)."""
    bucket, _ = _window(rate, now)
    try:
        cache.delete(_key(scope, ident, bucket))
    except Exception:
        logger.warning("rate limit %s: cache unavailable, count not reset", scope, exc_info=True)


def client_ip(request: HttpRequest) -> str:
    """The address a throttle counts: ``REMOTE_ADDR``, or the last hop of ``CLIENT_IP_HEADER`` when a
    proxy we run sets it. IPv6 clients are counted per /64, the block one subscriber usually holds."""
    raw = ""
    header = settings.CLIENT_IP_HEADER
    if header:
        raw = request.headers.get(header, "").split(",")[-1].strip()
    raw = raw or str(request.META.get("REMOTE_ADDR") or "")
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw or "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
