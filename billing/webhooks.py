"""Stripe events: stored once on their id, applied once, in whatever order they arrive.

The webhook view only stores and enqueues (Stripe wants a fast 2xx); the apply task does the rest.
Top-ups credit the ledger under the Checkout Session id, so a replay or a second event type for the
same payment credits once. Payment status moves only forward in Stripe's time: an event older
than the one that set it cannot undo it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from billing.models import BillingAccount, LedgerEntry, StripeWebhookEvent
from billing.services import billing_account_get_or_create, ledger_post

logger = logging.getLogger(__name__)

TOP_UP_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
PAYMENT_FAILED_EVENTS = ("invoice.payment_failed",)
PAYMENT_OK_EVENTS = ("invoice.paid",)
HANDLED_TYPES = TOP_UP_EVENTS + PAYMENT_FAILED_EVENTS + PAYMENT_OK_EVENTS


def stripe_event_store(*, event: dict[str, Any]) -> tuple[StripeWebhookEvent, bool]:
    """(row, created): a delivery of an event already stored is a no-op."""
    return StripeWebhookEvent.objects.get_or_create(
        event_id=event["id"],
        defaults={
            "type": event.get("type", ""),
            "created": datetime.fromtimestamp(int(event.get("created", 0)), tz=UTC),
            "payload": event,
        },
    )


def stripe_event_apply(*, event_id: str) -> bool:
    """Apply a stored event once; False when it was applied before."""
    with transaction.atomic():
        row = StripeWebhookEvent.objects.select_for_update().get(pk=event_id)
        if row.processed_at is not None:
            return False
        obj = row.payload.get("data", {}).get("object", {})
        if row.type in TOP_UP_EVENTS:
            _apply_top_up(obj)
        elif row.type in PAYMENT_FAILED_EVENTS + PAYMENT_OK_EVENTS:
            _apply_payment_status(obj, failed=row.type in PAYMENT_FAILED_EVENTS, at=row.created)
        row.processed_at = timezone.now()
        row.save(update_fields=["processed_at"])
    return True


def _account_for(obj: dict[str, Any]) -> BillingAccount | None:
    org_id = (obj.get("metadata") or {}).get("organization_id") or obj.get("client_reference_id")
    if org_id:
        org = Organization.objects.filter(pk=org_id).first()
        if org is not None:
            return billing_account_get_or_create(organization=org)
    customer = obj.get("customer")
    if customer:
        return BillingAccount.objects.filter(stripe_customer_id=customer).first()
    return None


def _apply_top_up(obj: dict[str, Any]) -> None:
    if obj.get("payment_status") != "paid":
        return  # async methods complete later with async_payment_succeeded
    account = _account_for(obj)
    if account is None:
        logger.error("Checkout %s paid for no known organization", obj.get("id"))
        return
    amount = Decimal(int(obj.get("amount_total") or 0)) / 100
    ledger_post(
        account=account,
        kind=LedgerEntry.Kind.TOP_UP,
        amount=amount,
        reference=f"checkout:{obj['id']}",
        description="Stripe Checkout top-up",
    )


def _apply_payment_status(obj: dict[str, Any], *, failed: bool, at: datetime) -> None:
    account = _account_for(obj)
    if account is None:
        logger.warning("Invoice %s for an unknown customer %s", obj.get("id"), obj.get("customer"))
        return
    account = BillingAccount.objects.select_for_update().get(pk=account.pk)
    if account.payment_status_at is not None and at < account.payment_status_at:
        return  # a late, older event: the newer one already decided
    account.payment_failed = failed
    account.payment_status_at = at
    account.save(update_fields=["payment_failed", "payment_status_at"])
