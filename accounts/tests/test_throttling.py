"""The per-key rate limit: exact under concurrency on the shared Redis, an honest Retry-After,
and an API that keeps answering when the cache is down."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connections
from rest_framework.test import APIClient

from accounts.tests.factories import make_key
from accounts.throttling import ApiKeyRateThrottle
from callmissed import ratelimit
from testsupport.processes import free_port

SESSIONS = "/v1/voice/sessions"
WINDOW_START = 29_000_000 * 60.0  # an epoch second on a minute boundary (and an hour boundary)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttle's clock, set by the test: a window boundary never falls inside a test by chance."""
    now = [WINDOW_START + 12.0]
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", staticmethod(lambda: now[0]))
    return now


def _get(plaintext: str) -> Any:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client.get(SESSIONS)


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_never_get_more_than_the_limit(settings: Any, clock: list[float]) -> None:
    settings.API_RATE_LIMIT = "20/hour"
    key = make_key().plaintext
    burst = 50
    start = threading.Barrier(burst)

    def request(_: int) -> int:
        try:
            start.wait()
            return int(_get(key).status_code)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=burst) as pool:
        statuses = Counter(pool.map(request, range(burst)))

    assert statuses == {200: 20, 429: 30}


@pytest.mark.django_db
def test_retry_after_is_the_time_left_in_the_window(settings: Any, clock: list[float]) -> None:
    settings.API_RATE_LIMIT = "2/min"
    key = make_key().plaintext
    clock[0] = WINDOW_START + 10.0
    assert _get(key).status_code == 200
    clock[0] = WINDOW_START + 44.5
    assert _get(key).status_code == 200

    refused = _get(key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused["Retry-After"] == "16"  # the window ends at +60 s

    clock[0] = WINDOW_START + 60.0
    assert _get(key).status_code == 200


@pytest.mark.django_db
def test_an_unreachable_cache_lets_requests_through_and_says_so_once(
    settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process's memory of the outage goes with the test.
    monkeypatch.setattr(ratelimit, "_outage_logged_at", {})
    settings.API_RATE_LIMIT = "1/min"
    settings.CACHES = {
        "default": {
            "BACKEND": "callmissed.cache.ProcessRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    key = make_key().plaintext
    with caplog.at_level(logging.WARNING, logger="callmissed.ratelimit"):
        statuses = [_get(key).status_code for _ in range(5)]

    assert statuses == [200] * 5
    warnings = [r for r in caplog.records if r.name == "callmissed.ratelimit"]
    assert len(warnings) == 1
    assert "cache unavailable, allowing requests" in warnings[0].getMessage()


@pytest.mark.django_db
def test_a_forged_x_forwarded_for_does_not_buy_an_anonymous_client_a_fresh_budget(
    settings: Any, clock: list[float]
) -> None:
    settings.API_RATE_LIMIT = "3/min"
    client = APIClient()
    statuses = [client.get("/v1/catalog/voices", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code for i in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]


@pytest.mark.django_db
def test_an_api_rate_written_like_the_other_limits_is_understood(settings: Any, clock: list[float]) -> None:
    settings.API_RATE_LIMIT = "2/15min"
    key = make_key().plaintext
    assert [_get(key).status_code for _ in range(3)] == [200, 200, 429]
