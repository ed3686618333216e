"""The admin creates organizations through the audited service, and shows a new key once, in its
response, never through the messages cookie."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from accounts.keys import hash_key
from accounts.models import ApiKey, AuditLog, Organization
from accounts.tests.factories import make_org
from billing.models import BillingAccount

pytestmark = pytest.mark.django_db


def test_an_organization_added_in_the_admin_is_audited_with_its_account(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/accounts/organization/add/",
        {
            "name": "Staff Made",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    organization = Organization.objects.get(name="Staff Made")
    [row] = AuditLog.objects.filter(organization=organization, action=AuditLog.Action.ORGANIZATION_CREATED)
    actor = row.actor
    assert actor is not None and actor.is_superuser
    assert BillingAccount.objects.filter(organization=organization).exists()


def _admin_key_create(admin_client: Client, organization: Organization) -> Any:
    return admin_client.post(
        "/admin/accounts/apikey/add/",
        {"organization": str(organization.pk), "name": "ops", "expires_at_0": "", "expires_at_1": ""},
    )


def test_the_admin_shows_a_new_key_once_in_its_response_and_never_in_a_cookie(admin_client: Client) -> None:
    organization = make_org()
    response = _admin_key_create(admin_client, organization)

    assert response.status_code == 200
    key = ApiKey.objects.get(organization=organization)
    page = response.content.decode()
    [plaintext] = re.findall(r"cm_[A-Za-z0-9_\-]{20,}", page)  # once
    assert hash_key(plaintext) == key.hashed_secret
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    assert all(plaintext not in morsel.OutputString() for morsel in response.cookies.values())
    assert all(plaintext not in str(message) for message in get_messages(response.wsgi_request))
    assert all(plaintext not in morsel.value for morsel in admin_client.cookies.values())

    # Nowhere to be seen again: not on the list, not on the key's page.
    assert plaintext not in admin_client.get("/admin/accounts/apikey/").content.decode()
    assert plaintext not in admin_client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    [audit] = AuditLog.objects.filter(action=AuditLog.Action.API_KEY_CREATED, target=str(key.pk))
    assert audit.actor is not None and audit.actor.is_superuser


def test_an_invalid_admin_key_form_creates_nothing(admin_client: Client) -> None:
    response = admin_client.post("/admin/accounts/apikey/add/", {"name": "no organization"})
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert not ApiKey.objects.exists()
