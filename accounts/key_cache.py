"""Authenticated API keys kept in the process, so a request costs no database read for its key.

An entry is trusted only under the key generation it was loaded with: every change of a key
(revoked, its expiry edited, deleted) bumps a counter in the shared cache once it has committed,
and clears this process's entries at once (``api_keys_changed``). Each request reads the counter
(one cache GET, which the rate limit's cache serves anyway), so a revocation committed in any
process takes effect at every process's next request. While the counter cannot be read (the cache
down) no entry is trusted: every request reads its key from the database.

``API_KEY_CACHE_SECONDS`` bounds an entry's age whatever the counter says: it is the revocation
bound in the one case the counter misses, a bump lost because the cache was down at the change
and came back with its old value. 0 turns the cache off. Expiry is checked on every request, so a
key is refused from the exact instant it expires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache

from accounts.keys import hash_key, looks_like_key
from accounts.models import ApiKey
from accounts.selectors import InvalidApiKey, api_key_authenticate, api_key_check_usable

logger = logging.getLogger(__name__)

# The time source of entries' ages; tests replace it.
clock: Callable[[], float] = time.monotonic

GENERATION_KEY = "api-keys:generation"
# Only keys that authenticated are kept: an organization has a few; this bounds a process anyway.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    api_key: ApiKey
    generation: int
    loaded_at: float


_entries: dict[str, _Entry] = {}


def _generation() -> int | None:
    """The shared key generation (0 before any change), or None while the cache cannot be read."""
    try:
        value = cache.get(GENERATION_KEY)
    except Exception:  # any backend's outage: nothing cached may be trusted now
        logger.debug("API key generation unreadable; keys are read from the database", exc_info=True)
        return None
    return int(value or 0)


def api_key_authenticate_cached(*, plaintext: str, now: datetime | None = None) -> ApiKey:
    """``api_key_authenticate``, answered from the process's entries while they are current."""
    if not looks_like_key(plaintext):
        raise InvalidApiKey()
    ttl = settings.API_KEY_CACHE_SECONDS
    generation = _generation() if ttl > 0 else None
    hashed = hash_key(plaintext)
    if generation is not None:
        entry = _entries.get(hashed)
        if entry is not None and entry.generation == generation and clock() - entry.loaded_at < ttl:
            api_key_check_usable(api_key=entry.api_key, now=now)
            return entry.api_key
    # The generation was read before the key: a change committing in between bumps it past the
    # entry's, so the entry is never trusted under a generation newer than what it saw.
    api_key = api_key_authenticate(plaintext=plaintext, now=now)
    if generation is not None:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[hashed] = _Entry(api_key=api_key, generation=generation, loaded_at=clock())
    return api_key


def api_keys_changed() -> None:
    """A key changed (and committed): no process trusts what it holds from before."""
    _entries.clear()
    try:
        try:
            cache.incr(GENERATION_KEY)
        except ValueError:  # no counter yet (or the cache lost it): any new value differs from 0
            if not cache.add(GENERATION_KEY, 1, timeout=None):
                cache.incr(GENERATION_KEY)
    except Exception:
        # Other processes still refuse the key within API_KEY_CACHE_SECONDS, and trust nothing
        # while the cache is down; this one has just dropped its entries.
        logger.warning("Could not publish an API key change to the shared cache", exc_info=True)


def clear() -> None:
    """Forget this process's entries now (a key changing in this process's own transaction)."""
    _entries.clear()
