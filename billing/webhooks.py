"""Stripe events: checked, stored once on their id, applied once, in whatever order they arrive.

The webhook view only checks, stores and enqueues (Stripe wants a fast 2xx); the apply task does
the rest. A top-up credits the ledger only for a Checkout Session this platform created
(``TopUpCheckout``), for its organization, amount and currency, under the session id, so a replay
or a second event type for the same payment credits once. Payment status moves only forward in
Stripe's time: an event older than the one that set it cannot undo it.

An event we will never apply (malformed, or not matching what we asked Stripe for) is marked
processed with ``error`` saying why, so it shows in the admin and is never retried; a transient
failure (the database) is recorded on the row and retried a bounded number of times.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from billing.models import BillingAccount, LedgerEntry, StripeWebhookEvent, TopUpCheckout
from billing.services import billing_account_get_or_create, ledger_post
from callmissed.errors import ValidationFailed

logger = logging.getLogger(__name__)

TOP_UP_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
PAYMENT_FAILED_EVENTS = ("invoice.payment_failed",)
PAYMENT_OK_EVENTS = ("invoice.paid",)
HANDLED_TYPES = TOP_UP_EVENTS + PAYMENT_FAILED_EVENTS + PAYMENT_OK_EVENTS

MAX_EVENT_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 100
# Stripe's events are a few levels deep; anything much deeper is not an event, and PostgreSQL's
# jsonb and Python's json both have recursion limits we must not reach.
MAX_EVENT_DEPTH = 32
# Stripe did not exist before 2010; an event "created" after tomorrow is not one of its clocks.
EARLIEST_EVENT_CREATED = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp())
LATEST_EVENT_CREATED_AHEAD_SECONDS = 86_400
# A transient failure is retried (by Celery, then by reconciliation) until this many attempts.
MAX_APPLY_ATTEMPTS = 10
_ERROR_LENGTH = 2000


class EventRefused(Exception):
    """A permanent reason not to apply a stored event; the message goes to its ``error``."""


# --- receiving ----------------------------------------------------------------------------------


def stripe_event_receive(*, event: Any, now: datetime | None = None) -> tuple[StripeWebhookEvent, bool]:
    """Check a verified event's shape and store it once: (row, created).

    A malformed event raises ``ValidationFailed``; if it carries a usable id it is stored first,
    marked processed with the reason in ``error``, so the delivery leaves a trace."""
    moment = now or timezone.now()
    problem = event_problem(event, now=moment)
    if problem is None:
        return stripe_event_store(event=event)
    event_id = _usable_id(event.get("id")) if isinstance(event, dict) else None
    if event_id is None:
        logger.warning("Refused a signed Stripe event without a usable id: %s", problem)
    else:
        logger.warning("Refused malformed Stripe event %s: %s", event_id, problem)
        StripeWebhookEvent.objects.get_or_create(
            event_id=event_id,
            defaults={
                "type": _storable_type(event.get("type")),
                "created": _storable_created(event.get("created"), default=moment),
                "payload": event if _storable(event) else {},
                "processed_at": moment,
                "error": f"Malformed event, not applied: {problem}"[:_ERROR_LENGTH],
            },
        )
    raise ValidationFailed(f"Malformed Stripe event: {problem}")


def stripe_event_store(*, event: dict[str, Any]) -> tuple[StripeWebhookEvent, bool]:
    """(row, created) for an event ``event_problem`` accepted: a delivery of an event already
    stored is a no-op, whatever its payload says now."""
    return StripeWebhookEvent.objects.get_or_create(
        event_id=event["id"],
        defaults={
            "type": event["type"],
            "created": datetime.fromtimestamp(event["created"], tz=UTC),
            "payload": event,
        },
    )


def event_problem(event: Any, *, now: datetime) -> str | None:
    """Why ``event`` is not a Stripe event we can store and apply, or None."""
    if not isinstance(event, dict):
        return "the body is not a JSON object"
    if not _storable(event):
        return f"the event is nested deeper than {MAX_EVENT_DEPTH} levels or holds NUL or unpaired surrogate characters"
    if _usable_id(event.get("id")) is None:
        return f"id must be a non-empty string of at most {MAX_EVENT_ID_LENGTH} characters"
    event_type = event.get("type")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= MAX_EVENT_TYPE_LENGTH:
        return f"type must be a non-empty string of at most {MAX_EVENT_TYPE_LENGTH} characters"
    if _created(event.get("created"), now=now) is None:
        return "created must be a Unix timestamp (integer seconds) between 2010 and tomorrow"
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        return "data.object must be an object"
    return _object_problem(event_type, data["object"])


# The fields each handled type reads, with the JSON types Stripe sends them as (None = null).
_TOP_UP_FIELDS: dict[str, tuple[type, ...]] = {
    "amount_total": (int, type(None)),
    "currency": (str, type(None)),
    "mode": (str, type(None)),
    "payment_status": (str, type(None)),
    "client_reference_id": (str, type(None)),
    "metadata": (dict, type(None)),
}
_INVOICE_FIELDS: dict[str, tuple[type, ...]] = {"customer": (str, type(None))}


def _object_problem(event_type: str, obj: dict[str, Any]) -> str | None:
    if event_type in TOP_UP_EVENTS:
        fields = _TOP_UP_FIELDS
    elif event_type in PAYMENT_FAILED_EVENTS + PAYMENT_OK_EVENTS:
        fields = _INVOICE_FIELDS
    else:
        return None  # stored for the record, never applied
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        return "data.object.id must be a non-empty string"
    for name, types in fields.items():
        value = obj.get(name)
        # bool is an int to Python, never to Stripe.
        if isinstance(value, bool) or not isinstance(value, types):
            return f"data.object.{name} has the wrong type ({type(value).__name__})"
    metadata = obj.get("metadata") or {}
    if not all(isinstance(v, str) for v in metadata.values()):
        return "data.object.metadata values must be strings"
    return None


def _usable_id(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_EVENT_ID_LENGTH and _storable(value):
        return value
    return None


def _created(value: Any, *, now: datetime) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if not EARLIEST_EVENT_CREATED <= value <= now.timestamp() + LATEST_EVENT_CREATED_AHEAD_SECONDS:
        return None
    return value


def _storable_type(value: Any) -> str:
    return value[:MAX_EVENT_TYPE_LENGTH] if isinstance(value, str) and _storable(value) else ""


def _storable_created(value: Any, *, default: datetime) -> datetime:
    created = _created(value, now=default)
    return default if created is None else datetime.fromtimestamp(created, tz=UTC)


def _storable(value: Any, depth: int = 0) -> bool:
    """Whether PostgreSQL's jsonb can hold ``value``: no NUL, no unpaired surrogate, not too deep."""
    if depth > MAX_EVENT_DEPTH:
        return False
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return all(_storable(k, depth) and _storable(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v, depth + 1) for v in value)
    return True


# --- applying -----------------------------------------------------------------------------------


def stripe_event_apply(*, event_id: str, now: datetime | None = None) -> bool:
    """Apply a stored event once; True when this call applied it.

    A refusal or an unexpected error is written to the row and the event marked processed (it
    would fail the same way again); a database failure is written, counted and re-raised so the
    caller retries, until ``MAX_APPLY_ATTEMPTS``."""
    moment = now or timezone.now()
    try:
        with transaction.atomic():
            row = StripeWebhookEvent.objects.select_for_update().filter(pk=event_id).first()
            if row is None:
                logger.warning("Stripe event %s is not stored; nothing to apply", event_id)
                return False
            if row.processed_at is not None:
                return False
            _apply(row, at=moment)
            row.processed_at = moment
            row.error = ""
            row.attempts += 1
            row.save(update_fields=["processed_at", "error", "attempts"])
        return True
    except EventRefused as refusal:
        logger.warning("Stripe event %s not applied: %s", event_id, refusal)
        _record_failure(event_id=event_id, error=str(refusal), final=True, at=moment)
        return False
    except (OperationalError, InterfaceError) as error:
        _record_failure(event_id=event_id, error=f"{type(error).__name__}: {error}", final=False, at=moment)
        raise
    except Exception as error:
        # A shape or a state this code does not handle: retrying cannot help, the admin can see it.
        logger.exception("Stripe event %s failed to apply", event_id)
        _record_failure(event_id=event_id, error=f"{type(error).__name__}: {error}", final=True, at=moment)
        return False


def _record_failure(*, event_id: str, error: str, final: bool, at: datetime) -> None:
    try:
        with transaction.atomic():
            row = StripeWebhookEvent.objects.select_for_update().filter(pk=event_id).first()
            if row is None or row.processed_at is not None:
                return
            row.attempts += 1
            row.error = error[:_ERROR_LENGTH]
            if final or row.attempts >= MAX_APPLY_ATTEMPTS:
                row.processed_at = at
            row.save(update_fields=["attempts", "error", "processed_at"])
    except (OperationalError, InterfaceError):
        logger.exception("Could not record the failure of Stripe event %s: %s", event_id, error)


def _apply(row: StripeWebhookEvent, *, at: datetime) -> None:
    if row.type not in HANDLED_TYPES:
        return
    payload = row.payload
    problem = event_problem(payload, now=at)
    if problem is not None:
        raise EventRefused(f"Malformed event, not applied: {problem}")
    obj = payload["data"]["object"]
    if row.type in TOP_UP_EVENTS:
        _apply_top_up(obj, event_type=row.type, at=at)
    else:
        _apply_payment_status(obj, failed=row.type in PAYMENT_FAILED_EVENTS, at=row.created)


def _apply_top_up(obj: dict[str, Any], *, event_type: str, at: datetime) -> None:
    session_id = obj["id"]
    checkout = (
        TopUpCheckout.objects.select_for_update().select_related("organization").filter(stripe_id=session_id).first()
    )
    if checkout is None:
        raise EventRefused(f"Checkout Session {session_id} was not created by this platform; nothing credited.")
    organization_id = str(checkout.organization_id)
    named = {ref for ref in ((obj.get("metadata") or {}).get("organization_id"), obj.get("client_reference_id")) if ref}
    if named != {organization_id}:
        raise EventRefused(
            f"Checkout Session {session_id} names organization {sorted(named) or 'none'}, "
            f"but was created for {organization_id}; nothing credited."
        )
    if obj.get("mode") != "payment":
        raise EventRefused(f"Checkout Session {session_id} has mode {obj.get('mode')!r}, not 'payment'.")
    payment_status = obj.get("payment_status")
    if payment_status != "paid":
        if event_type == "checkout.session.completed" and payment_status == "unpaid":
            return  # an async payment method: checkout.session.async_payment_succeeded follows
        raise EventRefused(f"Checkout Session {session_id} has payment status {payment_status!r}; nothing credited.")
    currency = obj.get("currency")
    if currency != checkout.currency:
        raise EventRefused(
            f"Checkout Session {session_id} was paid in {currency!r}, but asked for {checkout.currency!r}."
        )
    amount = obj.get("amount_total")
    if amount != checkout.amount_cents or checkout.amount_cents <= 0:
        raise EventRefused(
            f"Checkout Session {session_id} reports amount_total {amount!r}, "
            f"but asked for {checkout.amount_cents}; nothing credited."
        )
    ledger_post(
        account=billing_account_get_or_create(organization=checkout.organization),
        kind=LedgerEntry.Kind.TOP_UP,
        amount=Decimal(checkout.amount_cents) / 100,
        reference=f"checkout:{session_id}",
        description="Stripe Checkout top-up",
    )
    if checkout.status != TopUpCheckout.Status.CREDITED:
        checkout.status = TopUpCheckout.Status.CREDITED
        checkout.credited_at = at
        checkout.save(update_fields=["status", "credited_at"])


def _apply_payment_status(obj: dict[str, Any], *, failed: bool, at: datetime) -> None:
    # Invoices are bound by their Stripe customer only: that is what Stripe charged.
    customer = obj.get("customer")
    if not customer:
        raise EventRefused(f"Invoice {obj['id']} names no customer; ignored.")
    account = BillingAccount.objects.select_for_update().filter(stripe_customer_id=customer).first()
    if account is None:
        raise EventRefused(f"Invoice {obj['id']} is for customer {customer}, which is not one of ours; ignored.")
    if account.payment_status_at is not None and at < account.payment_status_at:
        return  # a late, older event: the newer one already decided
    account.payment_failed = failed
    account.payment_status_at = at
    account.save(update_fields=["payment_failed", "payment_status_at"])
