"""A process answers API keys from memory without letting a revoked or expired key through:
revoked in this process, refused at once; revoked in another, refused at this process's next
request; with the shared cache down, never answered from memory; expired, refused at the instant."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import key_cache, services
from accounts.models import ApiKey
from accounts.selectors import ExpiredApiKey
from accounts.tests.factories import make_key, make_org

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"


def _client(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def _key_reads(client: APIClient) -> tuple[int, int]:
    """The status of a list request and how many statements read the key table."""
    with CaptureQueriesContext(connection) as queries:
        status = client.get(SESSIONS).status_code
    return status, sum('FROM "accounts_apikey"' in q["sql"] for q in queries.captured_queries)


def _revoked_elsewhere(api_key: ApiKey) -> None:
    """What another server process's revocation leaves this one: the row revoked, this process's
    entries untouched; the caller bumps the shared generation (or, to model a lost bump, not)."""
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())


def _generation_bumped_elsewhere() -> None:
    kept = dict(key_cache._entries)
    key_cache.api_keys_changed()
    key_cache._entries.update(kept)  # the other process's change leaves this one's memory as it was


@pytest.fixture
def clock(monkeypatch: Any) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(key_cache, "clock", lambda: now[0])
    return now


def test_a_key_in_use_is_read_from_the_database_once() -> None:
    client = _client(make_key(make_org()).plaintext)
    assert _key_reads(client) == (200, 1)
    assert _key_reads(client) == (200, 0)


def test_a_key_revoked_in_this_process_is_refused_at_its_next_request() -> None:
    created = make_key(make_org())
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    services.api_key_revoke(api_key=ApiKey.objects.get(pk=created.api_key.pk))
    response = client.get(SESSIONS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "revoked_api_key"


def test_a_key_revoked_in_another_process_is_refused_at_this_ones_next_request(clock: list[float]) -> None:
    created = make_key(make_org())
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    _revoked_elsewhere(created.api_key)
    _generation_bumped_elsewhere()
    response = client.get(SESSIONS)  # no time has passed
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "revoked_api_key"


def test_without_the_generation_bump_a_revocation_takes_at_most_the_cache_lifetime(
    clock: list[float], settings: Any
) -> None:
    """The bound in the one case the generation misses (the cache down at the revocation)."""
    settings.API_KEY_CACHE_SECONDS = 30
    created = make_key(make_org())
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    _revoked_elsewhere(created.api_key)
    clock[0] += 29.9
    assert client.get(SESSIONS).status_code == 200
    clock[0] += 0.1
    assert client.get(SESSIONS).status_code == 401


def test_while_the_shared_cache_is_down_every_request_reads_its_key(settings: Any) -> None:
    created = make_key(make_org())
    client = _client(created.plaintext)
    assert _key_reads(client) == (200, 1)
    settings.CACHES = {
        "default": {
            "BACKEND": "callmissed.cache.ProcessRedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.2},
        }
    }
    assert _key_reads(client) == (200, 1)
    _revoked_elsewhere(created.api_key)  # and no generation bump could reach anyone
    assert client.get(SESSIONS).status_code == 401


def test_a_cached_key_is_refused_from_the_instant_it_expires() -> None:
    expires = timezone.now() + timedelta(hours=1)
    created = services.api_key_create(organization=make_org(), expires_at=expires)
    just_before = expires - timedelta(microseconds=1)
    assert key_cache.api_key_authenticate_cached(plaintext=created.plaintext, now=just_before).pk == created.api_key.pk
    assert key_cache.api_key_authenticate_cached(plaintext=created.plaintext, now=just_before).pk == created.api_key.pk
    with pytest.raises(ExpiredApiKey):
        key_cache.api_key_authenticate_cached(plaintext=created.plaintext, now=expires)


def test_an_expiry_edited_after_creation_reaches_the_cache() -> None:
    created = make_key(make_org())
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    key = ApiKey.objects.get(pk=created.api_key.pk)
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save()  # as the admin's form does
    response = client.get(SESSIONS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "expired_api_key"


def test_recording_a_keys_last_use_keeps_every_processs_cache() -> None:
    created = make_key(make_org())
    generation = cache.get(key_cache.GENERATION_KEY)
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    assert ApiKey.objects.get(pk=created.api_key.pk).last_used_at is not None
    assert cache.get(key_cache.GENERATION_KEY) == generation
    assert _key_reads(client) == (200, 0)


def test_a_key_revoked_elsewhere_creates_nothing_even_while_this_process_still_holds_it(clock: list[float]) -> None:
    """The one window the cache leaves (a generation bump lost) reads at most: admission reads the
    key's state itself, in the statement that counts the sessions."""
    created = make_key(make_org())
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    _revoked_elsewhere(created.api_key)  # and no bump reaches this process
    assert client.get(SESSIONS).status_code == 200  # within API_KEY_CACHE_SECONDS
    response = client.post(SESSIONS, {}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "revoked_api_key"
    assert not created.api_key.organization.voice_sessions.exists()


def test_a_key_that_expired_since_it_was_cached_creates_nothing() -> None:
    created = services.api_key_create(organization=make_org(), expires_at=timezone.now() + timedelta(hours=1))
    client = _client(created.plaintext)
    assert client.get(SESSIONS).status_code == 200
    ApiKey.objects.filter(pk=created.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.post(SESSIONS, {}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "expired_api_key"
