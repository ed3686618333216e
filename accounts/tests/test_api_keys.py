from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.keys import hash_key
from accounts.models import ApiKey, AuditLog, Organization
from accounts.tests.factories import make_key, make_org
from accounts.throttling import ApiKeyRateThrottle

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"


def _get(plaintext: str | None, header: str | None = None) -> Any:
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    elif plaintext is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client.get(SESSIONS)


def _assert_401(response: Any, code: str) -> None:
    assert response.status_code == 401
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response["X-Request-ID"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_key_is_long_random_and_stored_only_as_hash() -> None:
    created = make_key()
    plaintext = created.plaintext
    assert plaintext.startswith("cm_") and len(plaintext) >= 40
    row = ApiKey.objects.get(pk=created.api_key.pk)
    stored = [str(getattr(row, f.attname)) for f in ApiKey._meta.fields]
    assert plaintext not in stored
    assert all(plaintext[3:] not in value for value in stored)
    assert row.hashed_secret == hash_key(plaintext)
    assert row.prefix == plaintext[:10] and row.last4 == plaintext[-4:]
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_CREATED, target=str(row.id)).exists()


def test_two_keys_never_collide() -> None:
    org = make_org()
    keys = {services.api_key_create(organization=org).plaintext for _ in range(20)}
    assert len(keys) == 20


def test_valid_key_authenticates_and_records_last_use() -> None:
    created = make_key()
    assert _get(created.plaintext).status_code == 200
    created.api_key.refresh_from_db()
    assert created.api_key.last_used_at is not None


def test_missing_key_is_401_envelope() -> None:
    _assert_401(_get(None), "unauthenticated")


@pytest.mark.parametrize("header", ["Token cm_abc", "Bearer", "Bearer a b", "Basic dXNlcjpwYXNz"])
def test_malformed_authorization_header_is_401(header: str) -> None:
    _assert_401(_get(None, header=header), "unauthenticated")


@pytest.mark.parametrize("plaintext", ["cm_" + "x" * 43, "sk_live_notours", "cm_short"])
def test_unknown_key_is_401(plaintext: str) -> None:
    make_key()
    _assert_401(_get(plaintext), "invalid_api_key")


def test_revoked_key_is_rejected_immediately() -> None:
    created = make_key()
    assert _get(created.plaintext).status_code == 200
    services.api_key_revoke(api_key=created.api_key)
    _assert_401(_get(created.plaintext), "revoked_api_key")
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_REVOKED).count() == 1


def test_expired_key_is_rejected() -> None:
    org = make_org()
    created = services.api_key_create(organization=org, expires_at=timezone.now() - timedelta(seconds=1))
    _assert_401(_get(created.plaintext), "expired_api_key")


def test_create_api_key_command_prints_working_key_last() -> None:
    out = StringIO()
    call_command("create_api_key", "Brand New Org", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    assert Organization.objects.filter(name="Brand New Org").count() == 1
    assert _get(key).status_code == 200

    out2 = StringIO()
    call_command("create_api_key", "Brand New Org", stdout=out2)
    second = out2.getvalue().strip().splitlines()[-1]
    assert second != key
    assert Organization.objects.filter(name="Brand New Org").count() == 1
    assert ApiKey.objects.filter(organization__name="Brand New Org").count() == 2


def test_rate_limit_per_key_answers_429_with_retry_after(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.API_RATE_LIMIT = "3/min"
    # Mid-window on the throttle's clock, so no minute boundary falls inside the test by chance.
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", staticmethod(lambda: 29_000_000 * 60.0 + 12.0))
    limited, other = make_key(), make_key()
    for _ in range(3):
        assert _get(limited.plaintext).status_code == 200
    response = _get(limited.plaintext)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    # The budget is per key: another key is unaffected.
    assert _get(other.plaintext).status_code == 200
