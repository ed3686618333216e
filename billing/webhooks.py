"""Stripe events: checked, stored once on their id, applied once, in whatever order they arrive.

The webhook view only checks, stores and enqueues (Stripe wants a fast 2xx); the apply task does
the rest. A top-up credits the ledger only for a Checkout Session this platform created
(``TopUpCheckout``), for its organization, amount and currency, under the session id, so a replay
or a second event type for the same payment credits once. A session with no ``TopUpCheckout``
(created before that table existed) is looked up at Stripe and adopted only if Stripe's own copy
is one of our top-ups. Payment status moves only forward in Stripe's time: an event older than
the one that set it cannot undo it.

An event we will never apply (malformed, or not matching what we asked Stripe for) is marked
processed with ``error`` saying why, so it shows in the admin and is never retried. Any other
failure of a top-up (the database, Stripe, a bug) is never final: a customer paid, so the event
stays unprocessed with its error and attempt count, and the Celery retries and the hourly
reconciliation keep applying it. Other events are retried a bounded number of times.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from accounts.models import Organization
from billing import stripe_gateway
from billing.models import BillingAccount, LedgerEntry, StripeWebhookEvent, TopUpCheckout
from billing.selectors import billing_account_get
from billing.services import TOP_UP_CURRENCY, balance_credit
from callmissed import jsonsafe
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
# A transient failure of an event that is not a top-up is retried (by Celery, then by
# reconciliation) until this many attempts; a top-up is retried for as long as it fails.
MAX_APPLY_ATTEMPTS = 10
_ERROR_LENGTH = 2000


class EventRefused(Exception):
    """A permanent reason not to apply a stored event; the message goes to its ``error``."""


class ApplyDeferred(Exception):
    """A top-up failed for a reason that is not a refusal; recorded on its row, to be retried."""


# What a caller of ``stripe_event_apply`` should retry later: the failure is already on the row.
RETRYABLE = (OperationalError, InterfaceError, stripe_gateway.StripeFailure, ApplyDeferred)


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
        return jsonsafe.unstorable(value) is None
    if isinstance(value, dict):
        return all(_storable(k, depth) and _storable(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v, depth + 1) for v in value)
    return True


# --- applying -----------------------------------------------------------------------------------


def stripe_event_apply(*, event_id: str, now: datetime | None = None) -> bool:
    """Apply a stored event once; True when this call applied it.

    A refusal is written to the row and the event marked processed. Any other failure is written
    and counted; a top-up stays unprocessed and the failure is raised (one of ``RETRYABLE``) so the
    caller retries. Any other event is marked processed on an unexpected error (it would fail the
    same way again), and a database failure is raised until ``MAX_APPLY_ATTEMPTS``."""
    moment = now or timezone.now()
    try:
        # Before the row is locked: Stripe may be slow, and the lock is held for the whole apply.
        _adopt_pre_table_checkout(event_id=event_id, at=moment)
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
        _record_failure(event_id=event_id, error=str(refusal), refused=True, at=moment)
        return False
    except (OperationalError, InterfaceError, stripe_gateway.StripeFailure) as error:
        _record_failure(event_id=event_id, error=f"{type(error).__name__}: {error}", refused=False, at=moment)
        raise
    except Exception as error:
        # A shape or a state this code does not handle: retrying cannot help an invoice event, the
        # admin can see it; a top-up is money received, so it stays for the retries (and a fix).
        logger.exception("Stripe event %s failed to apply", event_id)
        settled = _record_failure(
            event_id=event_id, error=f"{type(error).__name__}: {error}", refused=False, unexpected=True, at=moment
        )
        if not settled:
            raise ApplyDeferred(f"Stripe event {event_id} failed to apply: {error}") from error
        return False


def _record_failure(*, event_id: str, error: str, refused: bool, at: datetime, unexpected: bool = False) -> bool:
    """Write ``error`` on the row and count the attempt; True when the event is now settled.

    A refusal settles any event. A top-up is otherwise never settled: the customer paid. Any
    other event is settled by an unexpected error or after ``MAX_APPLY_ATTEMPTS``."""
    try:
        with transaction.atomic():
            row = StripeWebhookEvent.objects.select_for_update().filter(pk=event_id).first()
            if row is None or row.processed_at is not None:
                return True
            top_up = row.type in TOP_UP_EVENTS
            row.attempts += 1
            row.error = error[:_ERROR_LENGTH]
            if refused or (not top_up and (unexpected or row.attempts >= MAX_APPLY_ATTEMPTS)):
                row.processed_at = at
            row.save(update_fields=["attempts", "error", "processed_at"])
    except (OperationalError, InterfaceError):
        logger.exception("Could not record the failure of Stripe event %s: %s", event_id, error)
        return False
    if top_up and not refused:
        logger.error(
            "Stripe top-up event %s not applied (attempt %d); it stays queued for retries: %s",
            event_id,
            row.attempts,
            error,
        )
    return row.processed_at is not None


def _adopt_pre_table_checkout(*, event_id: str, at: datetime) -> None:
    """Record a ``TopUpCheckout`` from Stripe's own copy of the session a top-up event names, when
    none exists: sessions created before that table existed live for a day, and are paid.

    Only a session of our account (Stripe answers 404 for any other) that our checkout created
    (``purpose`` and ``organization_id`` metadata), for the organization the event names, in
    ``payment`` mode, in ``usd`` and for a positive amount is adopted. A 404 leaves the event to
    the usual refusal; Stripe failing raises ``StripeFailure``, so the event is retried."""
    row = StripeWebhookEvent.objects.filter(pk=event_id, processed_at__isnull=True, type__in=TOP_UP_EVENTS).first()
    if row is None or event_problem(row.payload, now=at) is not None:
        return  # nothing to apply, or refused by the apply itself
    obj = row.payload["data"]["object"]
    session_id = obj["id"]
    if not session_id.startswith("cs_") or TopUpCheckout.objects.filter(stripe_id=session_id).exists():
        return
    session = stripe_gateway.checkout_session_retrieve(session_id=session_id)
    if session is None:
        return
    organization, problem = _adoption_problem(session, event_object=obj)
    if problem is not None or organization is None:
        raise EventRefused(f"Checkout Session {session_id} was not created by this platform: {problem}")
    TopUpCheckout.objects.get_or_create(
        stripe_id=session["id"],
        defaults={
            "organization": organization,
            "amount_cents": session["amount_total"],
            "currency": session["currency"],
        },
    )
    logger.info("Adopted Checkout Session %s from Stripe for organization %s", session_id, organization.pk)


# Far above any top-up, far below PostgreSQL's bigint.
_MAX_ADOPTED_AMOUNT_CENTS = 10**12


def _adoption_problem(
    session: dict[str, Any], *, event_object: dict[str, Any]
) -> tuple[Organization | None, str | None]:
    """(organization, None) when Stripe's copy of a session is one of our top-ups for the
    organization the event names, else (None, why not)."""
    if session.get("object") != "checkout.session" or session.get("id") != event_object["id"]:
        return None, "Stripe returned another object; nothing credited."
    metadata = session.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    if metadata.get("purpose") != "top_up":
        return None, "Stripe's copy is not a top-up; nothing credited."
    reference = metadata.get("organization_id")
    try:
        organization = Organization.objects.filter(pk=reference).first() if isinstance(reference, str) else None
    except (ValidationError, ValueError):
        organization = None
    if organization is None:
        return None, f"Stripe's copy names no organization of ours ({reference!r}); nothing credited."
    organization_id = str(organization.pk)
    stripe_named = {ref for ref in (reference, session.get("client_reference_id")) if ref}
    event_named = {
        ref
        for ref in (
            (event_object.get("metadata") or {}).get("organization_id"),
            event_object.get("client_reference_id"),
        )
        if ref
    }
    if stripe_named != {organization_id} or event_named != {organization_id}:
        return None, (
            f"the event names organization {sorted(event_named) or 'none'}, Stripe's copy "
            f"{sorted(stripe_named)}; nothing credited."
        )
    if session.get("mode") != "payment":
        return None, f"Stripe's copy has mode {session.get('mode')!r}, not 'payment'; nothing credited."
    if session.get("currency") != TOP_UP_CURRENCY:
        return None, f"Stripe's copy is in {session.get('currency')!r}, not {TOP_UP_CURRENCY!r}; nothing credited."
    amount = session.get("amount_total")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= _MAX_ADOPTED_AMOUNT_CENTS:
        return None, f"Stripe's copy has amount_total {amount!r}; nothing credited."
    return organization, None


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
    balance_credit(
        account=billing_account_get(organization=checkout.organization),
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
