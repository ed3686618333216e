"""/healthz, /readyz and the /metrics gate: what an orchestrator and a scraper see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.test import Client

from callmissed import health
from testsupport.processes import free_port
from testsupport.redis_server import RedisServer, redis_server_available

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_readiness() -> Iterator[None]:
    """Each test changes the dependencies; a result from the test before must not answer."""
    health.READINESS.forget()
    yield
    health.READINESS.forget()


def _point_redis_at(settings: Any, url: str) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "callmissed.cache.ProcessRedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [{"address": url}]}}
    }
    settings.CELERY_BROKER_URL = url


@pytest.fixture
def private_redis(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.skip("redis-server is not installed")
    with RedisServer(directory=tmp_path / "redis") as server:
        _point_redis_at(settings, server.url(0))
        yield server


def test_healthz_answers_without_a_key_or_any_dependency() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_with_every_check_when_everything_is_up(private_redis: RedisServer) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "cache", "channel_layer", "broker"}
    assert all(check["ok"] and check["state"] == "ok" for check in body["checks"].values())


def test_readyz_is_503_naming_redis_when_redis_is_down(private_redis: RedisServer) -> None:
    private_redis.stop()
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert set(body["failed"]) == {"cache", "channel_layer", "broker"}
    assert body["checks"]["database"]["ok"] is True
    assert "ConnectionError" in body["checks"]["cache"]["error"]


def test_readyz_is_503_naming_the_database_when_it_is_unreachable(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = {**connections.settings[DEFAULT_DB_ALIAS], "HOST": "127.0.0.1", "PORT": str(free_port())}
    if unreachable["ENGINE"].endswith("sqlite3"):
        unreachable["NAME"] = "/nonexistent-directory/db.sqlite3"
    monkeypatch.setitem(connections.settings, DEFAULT_DB_ALIAS, unreachable)
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database"]
    assert body["checks"]["database"]["error"].startswith("OperationalError")
    assert body["checks"]["broker"]["ok"] is True


def test_a_readyz_failure_shows_no_credentials(private_redis: RedisServer, settings: Any) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    _point_redis_at(settings, url)
    body = Client().get("/readyz").content.decode()
    assert "hunter2-password" not in body


def test_operator_endpoints_need_no_api_key_and_are_not_in_the_public_schema() -> None:
    schema = Client().get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert not {"/healthz", "/readyz", "/metrics"} & set(schema["paths"])


def test_metrics_refuse_a_stranger_and_a_wrong_token(settings: Any) -> None:
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    settings.METRICS_BEARER_TOKEN = "scrape-token-0123456789"
    assert Client().get("/metrics").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token-0123456789").status_code == 403


def test_metrics_answer_the_bearer_token_or_an_allowed_address(settings: Any) -> None:
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    settings.METRICS_BEARER_TOKEN = "scrape-token-0123456789"
    with_token = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
    assert with_token.status_code == 200
    assert with_token["Content-Type"].startswith("text/plain")
    assert b"callmissed_live_sessions" in with_token.content
    from_allowed = Client(REMOTE_ADDR="10.1.2.3").get("/metrics")
    assert from_allowed.status_code == 200


def test_probes_by_address_are_answered_in_production_mode(settings: Any) -> None:
    """A load balancer calls http://10.0.3.7:8000/readyz: no public host name, no HTTPS."""
    settings.ALLOWED_HOSTS = ["api.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    client = Client(HTTP_HOST="10.0.3.7:8000", REMOTE_ADDR="10.0.0.2")
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/catalog/voices").status_code == 400  # everything else still checks the host


def test_readyz_details_are_for_operators_only(settings: Any) -> None:
    """A stranger learns ready or not and what failed, never hosts, timings or errors."""
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    settings.METRICS_BEARER_TOKEN = "scrape-token-0123456789"
    stranger = Client(REMOTE_ADDR="203.0.113.9").get("/readyz")
    assert stranger.status_code == 200 and stranger.json() == {"status": "ok"}
    operator = Client(REMOTE_ADDR="10.0.0.2").get("/readyz").json()
    assert set(operator["checks"]) == {"database", "cache", "channel_layer", "broker"}
    with_token = Client(REMOTE_ADDR="203.0.113.9").get("/readyz", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
    assert "checks" in with_token.json()


def test_a_proxied_request_from_loopback_is_no_operator(settings: Any) -> None:
    """Behind a reverse proxy on the same host every caller arrives from 127.0.0.1."""
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1/32"]
    settings.METRICS_BEARER_TOKEN = "scrape-token-0123456789"
    proxied = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert proxied.get("/metrics").status_code == 403
    for header in ("HTTP_X_REAL_IP", "HTTP_VIA", "HTTP_FORWARDED"):
        via_proxy: dict[str, Any] = {"REMOTE_ADDR": "127.0.0.1", header: "198.51.100.4"}
        assert Client(**via_proxy).get("/metrics").status_code == 403
    assert "checks" not in proxied.get("/readyz").json()
    token = proxied.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
    assert token.status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200


def test_probes_share_one_check_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop of probes costs one round of dependency checks a second, not one per probe."""
    now = [100.0]
    runs: list[float] = []

    def counted(timeout: float) -> tuple[bool, dict[str, dict[str, Any]]]:
        runs.append(now[0])
        return True, {}

    monkeypatch.setattr(health, "readiness", counted)
    shared = health.SharedReadiness(reuse_seconds=1.0, clock=lambda: now[0])
    for _ in range(50):
        assert shared.get(2.0) == (True, {})
    now[0] += 0.99
    shared.get(2.0)
    assert len(runs) == 1
    now[0] += 0.02
    shared.get(2.0)
    assert len(runs) == 2
