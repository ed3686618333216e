"""Every organization has its account from creation; reads write nothing; credits and limit
changes go through one audited service each."""

from __future__ import annotations

import importlib
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps

from accounts import services as account_services
from accounts.models import AuditLog, Organization
from billing import selectors, services, signals
from billing.models import BillingAccount, LedgerEntry
from billing.tests.support import C, apply_usage, usage_event
from callmissed.errors import ValidationFailed
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db

CREDITED = AuditLog.Action.BALANCE_CREDITED
LIMITS = AuditLog.Action.LIMITS_CHANGED


def _rows() -> tuple[int, int, int]:
    return BillingAccount.objects.count(), LedgerEntry.objects.count(), AuditLog.objects.count()


def test_an_organization_is_created_with_its_account_and_audited_starter_credit(settings: Any) -> None:
    settings.BILLING_SIGNUP_CREDIT_USD = "5.00"
    organization = account_services.organization_create(name="Acme")

    account = BillingAccount.objects.get(organization=organization)
    assert account.balance == Decimal("5.00")
    assert account.max_concurrent_sessions == settings.BILLING_MAX_CONCURRENT_SESSIONS
    actions = list(AuditLog.objects.filter(organization=organization).values_list("action", flat=True))
    assert sorted(actions) == sorted([AuditLog.Action.ORGANIZATION_CREATED, CREDITED])


def test_a_second_organization_of_the_same_person_starts_at_zero() -> None:
    first = account_services.organization_create(name="One", credit_claim="asha@example.com")
    second = account_services.organization_create(name="Two", credit_claim="asha@example.com")
    assert selectors.billing_account_get(organization=first).balance > 0
    assert selectors.billing_account_get(organization=second).balance == 0
    assert not AuditLog.objects.filter(organization=second, action=CREDITED).exists()


def test_no_starter_credit_when_the_signup_rules_refuse_it() -> None:
    organization = account_services.organization_create(name="Throttled", starter_credit=False)
    assert selectors.billing_account_get(organization=organization).balance == 0
    assert not LedgerEntry.objects.filter(account__organization=organization).exists()


def test_reading_limits_and_usage_writes_nothing(api: Any) -> None:
    before = _rows()
    assert api.get("/v1/billing/limits").status_code == 200
    assert api.get("/v1/usage").status_code == 200
    selectors.billing_limits(organization=api.org)
    assert _rows() == before


def test_selectors_return_decimals_and_the_api_renders_six_places(api: Any) -> None:
    account = selectors.billing_account_get(organization=api.org)
    services.billing_limits_change(account=account, spend_cap_monthly=Decimal("12.5"))

    limits = selectors.billing_limits(organization=api.org)
    assert isinstance(limits.balance, Decimal) and limits.spend_cap_monthly == Decimal("12.5")
    body = api.get("/v1/billing/limits").json()
    assert body["spend_cap_monthly"] == "12.500000"
    assert body["balance"] == "5.000000"
    assert body["live_sessions"] == 0


def test_a_credit_is_audited_once_per_reference(api: Any) -> None:
    account = selectors.billing_account_get(organization=api.org)
    for _ in range(2):
        services.balance_credit(
            account=account, kind=LedgerEntry.Kind.ADJUSTMENT, amount=Decimal("2.50"), reference="adjust:1"
        )

    assert selectors.billing_account_get(organization=api.org).balance == Decimal("7.50")
    [audit] = AuditLog.objects.filter(organization=api.org, action=CREDITED, target="adjust:1")
    assert audit.detail["kind"] == "adjustment" and Decimal(audit.detail["amount"]) == Decimal("2.50")


@pytest.mark.parametrize("amount", [Decimal(0), Decimal("-1"), Decimal("NaN")])
def test_a_credit_is_a_positive_amount(api: Any, amount: Decimal) -> None:
    account = selectors.billing_account_get(organization=api.org)
    before = _rows()
    with pytest.raises(ValidationFailed):
        services.balance_credit(account=account, kind=LedgerEntry.Kind.ADJUSTMENT, amount=amount, reference="x")
    assert _rows() == before


def test_a_limits_change_is_audited_with_old_and_new_values_and_a_no_op_is_not(api: Any) -> None:
    account = selectors.billing_account_get(organization=api.org)
    services.billing_limits_change(account=account, max_concurrent_sessions=3, prepaid=False)

    [audit] = AuditLog.objects.filter(organization=api.org, action=LIMITS)
    assert audit.detail == {"prepaid": [True, False], "max_concurrent_sessions": [1000, 3]}
    assert (account.prepaid, account.max_concurrent_sessions) == (False, 3)

    services.billing_limits_change(account=account, max_concurrent_sessions=3)
    assert AuditLog.objects.filter(organization=api.org, action=LIMITS).count() == 1


def test_usage_that_exhausts_the_balance_is_reported_once_after_commit_not_acted_on(
    api: Any, django_capture_on_commit_callbacks: Any
) -> None:
    heard: list[dict[str, Any]] = []

    def listener(sender: Any, **kwargs: Any) -> None:
        heard.append(kwargs)

    signals.balance_exhausted.connect(listener, dispatch_uid="test.listener")
    try:
        session = VoiceSessionFactory.create(organization=api.org)
        over = [usage_event(session, (C.LLM_OUTPUT_TOKENS, "kimi-k2.5", 3_000_000)) for _ in range(2)]
        with django_capture_on_commit_callbacks() as after_commit:
            lone = apply_usage(usage_event(session, (C.LLM_OUTPUT_TOKENS, "kimi-k2.5", 1_000_000)))
            batch = services.usage_events_apply(events=[*over, over[0]], organizations={str(session.id): api.org})
            # Nobody hears of it before the usage is committed: a rollback must not end calls.
            assert heard == []
        for callback in after_commit:
            callback()
    finally:
        signals.balance_exhausted.disconnect(dispatch_uid="test.listener")

    assert lone.exhausted == {}  # 2.30 of the 5.00 credit
    assert "exhausted" in batch.exhausted[api.org.pk]
    [kwargs] = heard  # once for the batch, not once per event
    assert kwargs["organization"] == api.org and kwargs["reason"] == batch.exhausted[api.org.pk]


def test_organizations_from_before_get_their_account_by_migration(settings: Any) -> None:
    settings.BILLING_SIGNUP_CREDIT_USD = "5.00"
    older = Organization.objects.create(name="From before")  # as organizations were made then
    migration = importlib.import_module("billing.migrations.0005_account_for_every_organization")

    migration.open_missing_accounts(apps, None)
    migration.open_missing_accounts(apps, None)  # a second run changes nothing

    account = BillingAccount.objects.get(organization=older)
    assert account.balance == Decimal("5.00")
    assert LedgerEntry.objects.filter(account=account, kind="grant").count() == 1
    assert AuditLog.objects.filter(organization=older, action=CREDITED).count() == 1
