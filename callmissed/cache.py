"""The Redis cache backend, with one client per process.

Django keeps a cache object per request context, and under ASGI every request is a new context:
the stock ``RedisCache`` then built a new redis-py connection pool, and opened a new TCP
connection (with its handshake) for every request's rate-limit and key-cache reads. Here every
context of a process shares one client, and with it one pool, per location and options;
redis-py's pool notices a fork and starts over in the child.
"""

from __future__ import annotations

import re
import threading
from functools import cached_property
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

_CLIENTS: dict[str, RedisCacheClient] = {}
_LOCK = threading.Lock()


class ProcessRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._location = server
        self._client_options: dict[str, Any] = params.get("OPTIONS", {})

    @cached_property
    def _cache(self) -> RedisCacheClient:
        key = repr((self._location, sorted(self._client_options.items())))
        with _LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                client = _CLIENTS[key] = RedisCacheClient(re.split("[;,]", self._location), **self._client_options)
            return client
