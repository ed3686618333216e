"""The admin edits an account's limits and credits its balance through the audited services."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from accounts.models import AuditLog
from billing import selectors
from billing.models import BillingAccount, LedgerEntry

pytestmark = pytest.mark.django_db

CREDITED = AuditLog.Action.BALANCE_CREDITED
LIMITS = AuditLog.Action.LIMITS_CHANGED


def _rows() -> tuple[int, int, int]:
    return BillingAccount.objects.count(), LedgerEntry.objects.count(), AuditLog.objects.count()


def _admin_post(account: BillingAccount, **changes: str) -> dict[str, str]:
    ledger = list(account.ledger.order_by("-created_at", "-id"))
    data = {
        "prepaid": "on" if account.prepaid else "",
        "spend_cap_monthly": "" if account.spend_cap_monthly is None else str(account.spend_cap_monthly),
        "max_concurrent_sessions": str(account.max_concurrent_sessions),
        "credit_usd": "",
        "credit_note": "",
        "ledger-TOTAL_FORMS": str(len(ledger)),
        "ledger-INITIAL_FORMS": str(len(ledger)),
        "ledger-MIN_NUM_FORMS": "0",
        "ledger-MAX_NUM_FORMS": "1000",
    }
    for index, entry in enumerate(ledger):
        data[f"ledger-{index}-id"] = str(entry.pk)
        data[f"ledger-{index}-account"] = str(account.pk)
    data.update(changes)
    return {name: value for name, value in data.items() if value != "" or name not in ("prepaid", "payment_failed")}


def test_admin_edits_of_an_account_go_through_the_audited_services(admin_client: Client, api: Any) -> None:
    account = selectors.billing_account_get(organization=api.org)
    url = f"/admin/billing/billingaccount/{account.pk}/change/"
    response = admin_client.post(
        url, _admin_post(account, max_concurrent_sessions="7", credit_usd="12.50", credit_note="goodwill")
    )
    assert response.status_code == 302, response.content.decode()[:2000]

    account.refresh_from_db()
    assert (account.max_concurrent_sessions, account.balance) == (7, Decimal("17.50"))
    [limits] = AuditLog.objects.filter(organization=api.org, action=LIMITS)
    assert limits.detail == {"max_concurrent_sessions": [1000, 7]}
    assert limits.actor is not None and limits.actor.is_superuser
    [credit] = AuditLog.objects.filter(organization=api.org, action=CREDITED, detail__kind="adjustment")
    assert Decimal(credit.detail["amount"]) == Decimal("12.50") and credit.actor == limits.actor
    assert LedgerEntry.objects.get(pk=credit.detail["ledger_entry"]).description == "goodwill"


def test_the_admin_wants_a_reason_for_a_credit_and_cannot_open_or_delete_accounts(
    admin_client: Client, api: Any
) -> None:
    account = selectors.billing_account_get(organization=api.org)
    url = f"/admin/billing/billingaccount/{account.pk}/change/"
    before = _rows()
    assert admin_client.post(url, _admin_post(account, credit_usd="3")).status_code == 200  # the form, with its error
    assert _rows() == before
    assert admin_client.get("/admin/billing/billingaccount/add/").status_code == 403
    assert admin_client.get(f"/admin/billing/billingaccount/{account.pk}/delete/").status_code == 403
