"""Organizations are made by one audited service, whichever door they come through, and open
with their billing account."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from accounts.models import AuditLog, Organization
from accounts.tests.factories import make_org
from billing.models import BillingAccount

pytestmark = pytest.mark.django_db

CREATED = AuditLog.Action.ORGANIZATION_CREATED


def _created_row(organization: Organization) -> AuditLog:
    [row] = AuditLog.objects.filter(organization=organization, action=CREATED)
    assert row.target == str(organization.pk)
    return row


def test_a_signup_creates_an_audited_organization_with_its_credited_account(client: Client) -> None:
    password = "a long and unusual passphrase 42"
    response = client.post(
        "/signup/",
        {
            "username": "asha",
            "email": "Asha+work@Example.com",
            "organization_name": "Asha Labs",
            "password1": password,
            "password2": password,
        },
    )
    assert response.status_code == 302

    organization = Organization.objects.get(name="Asha Labs")
    user = User.objects.get(username="asha")
    assert _created_row(organization).actor == user
    assert BillingAccount.objects.get(organization=organization).balance > 0
    credit = AuditLog.objects.get(organization=organization, action=AuditLog.Action.BALANCE_CREDITED)
    assert credit.actor == user
    assert "asha" not in credit.target  # the claim is hashed: no mailbox in the audit trail


def test_the_management_command_creates_an_audited_organization_once() -> None:
    for _ in range(2):
        call_command("create_api_key", "Ops Org", stdout=StringIO())
    organization = Organization.objects.get(name="Ops Org")
    assert _created_row(organization).actor is None
    assert BillingAccount.objects.filter(organization=organization).count() == 1
    assert AuditLog.objects.filter(organization=organization, action=AuditLog.Action.API_KEY_CREATED).count() == 2


def test_organizations_made_for_tests_are_made_like_real_ones() -> None:
    organization = make_org()
    assert _created_row(organization)
    assert BillingAccount.objects.get(organization=organization).balance == Decimal("5.00")
