"""The shared cache (rate-limit counters, the key cache's revocation generation) over ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import AsyncClient

from accounts.tests.factories import make_key
from testsupport.redis_server import RedisServer, redis_server_available

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.skip("redis-server is not installed")
    with RedisServer(directory=tmp_path / "redis") as server:
        yield server


def _connections_opened(url: str, settings: Any, backend: str, plaintext: str, requests: int) -> int:
    settings.CACHES = {"default": {"BACKEND": backend, "LOCATION": url, "OPTIONS": {"socket_timeout": 2}}}
    probe = redis.Redis.from_url(url)
    before = int(probe.info("stats")["total_connections_received"])

    async def calls() -> list[int]:
        client = AsyncClient(headers={"Authorization": f"Bearer {plaintext}"})
        # One task per request, as an ASGI server runs them: each starts from a fresh context.
        return [(await asyncio.create_task(client.get("/v1/catalog/voices"))).status_code for _ in range(requests)]

    assert asyncio.run(calls()) == [200] * requests
    opened = int(probe.info("stats")["total_connections_received"]) - before
    probe.close()
    return opened


def test_requests_share_the_processes_redis_connections(private_redis: RedisServer, settings: Any) -> None:
    """Every ASGI request is a new context with its own cache object; with Django's stock backend
    each opened a TCP connection to Redis (and its handshake) on the request's critical path."""
    plaintext = make_key().plaintext
    stock = _connections_opened(
        private_redis.url(1), settings, "django.core.cache.backends.redis.RedisCache", plaintext, 20
    )
    ours = _connections_opened(private_redis.url(2), settings, "callmissed.cache.ProcessRedisCache", plaintext, 20)
    assert stock >= 20  # what the test would catch
    assert ours <= 2
