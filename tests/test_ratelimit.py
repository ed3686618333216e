"""The shared fixed-window counter: exact under concurrency, windows on an injected clock, open on outage."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory

from callmissed import ratelimit
from callmissed.ratelimit import Rate, hit, parse_rate
from testsupport.processes import free_port

NOW = 1_900_000_000.0


def _ident() -> str:
    return uuid.uuid4().hex


def test_a_concurrent_burst_lets_exactly_the_limit_through() -> None:
    rate = Rate(limit=20, window_seconds=3600)
    ident = _ident()
    threads = 60
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        decision = hit("burst", ident, rate, now=NOW)
        with lock:
            results.append(decision.allowed)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results.count(True) == 20
    assert hit("burst", ident, rate, now=NOW).count == threads + 1


def test_a_new_window_starts_a_new_count_and_retry_after_names_its_start() -> None:
    rate = Rate(limit=2, window_seconds=60)
    ident = _ident()
    start = 1_900_000_040.0  # 1_900_000_020 is a minute boundary: 40 s of this window left
    assert [hit("w", ident, rate, now=start + i).allowed for i in range(3)] == [True, True, False]
    refused = hit("w", ident, rate, now=start + 10)
    assert not refused.allowed and refused.retry_after == 30
    assert hit("w", ident, rate, now=start + 40).allowed


def test_an_unreachable_cache_fails_open_unless_asked_to_fail_closed(settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    rate = Rate(limit=1, window_seconds=60)
    assert hit("down", _ident(), rate, now=NOW).allowed
    assert not hit("down", _ident(), rate, now=NOW, fail_open=False).allowed


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/min", Rate(10, 60)), ("5/15min", Rate(5, 900)), ("5/hour", Rate(5, 3600)), ("2/day", Rate(2, 86400))],
)
def test_rates_read_like_the_settings_table(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "ten/min", "5/fortnight", "0/min", "5"])
def test_a_malformed_rate_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ImproperlyConfigured):
        parse_rate(text, setting="LOGIN_RATE_LIMIT")


def test_the_client_address_is_remote_addr_unless_a_trusted_proxy_header_is_configured(settings: Any) -> None:
    factory = RequestFactory()
    spoofed = factory.get("/", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert ratelimit.client_ip(spoofed) == "198.51.100.7"
    settings.CLIENT_IP_HEADER = "X-Forwarded-For"
    proxied = factory.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9")
    assert ratelimit.client_ip(proxied) == "203.0.113.9"  # the hop our proxy appended, not the client's claim


def test_ipv6_clients_are_counted_per_slash_64() -> None:
    factory = RequestFactory()
    one = factory.get("/", REMOTE_ADDR="2001:db8:1:2::1")
    other = factory.get("/", REMOTE_ADDR="2001:db8:1:2:ffff::9")
    assert ratelimit.client_ip(one) == ratelimit.client_ip(other) == "2001:db8:1:2::/64"
    assert ratelimit.client_ip(factory.get("/", REMOTE_ADDR="::ffff:192.0.2.1")) == "192.0.2.1"
