"""The only module that talks to Stripe. Every POST carries an idempotency key.

``STRIPE_API_BASE`` points the real ``stripe`` client at a loopback fake in tests. Usage goes to
one Billing Meter, in micro-USD, keyed by customer; the meter is found (or created) by its event
name once per process.
"""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime
from typing import Any

import stripe
from django.conf import settings

# Stripe rejects a meter event whose identifier it has already seen: for a resend, that means
# "already recorded", which is exactly what we wanted.
_DUPLICATE_HINTS = ("identifier", "already")

# A delivery signed longer ago than this is refused, so a captured delivery cannot be replayed
# later (Stripe's own default).
SIGNATURE_MAX_AGE_SECONDS = 300
# A signature dated ahead of our clock by more than this is refused too: only clock skew
# explains a signature from the future, and a few minutes of it is all an honest sender has.
SIGNATURE_MAX_FUTURE_SECONDS = 180


class StripeFailure(Exception):
    """Stripe answered with an error or could not be reached; safe to retry."""


class StripeRefused(StripeFailure):
    """Stripe refused the request itself: the same request fails the same way again.

    ``param`` names the request parameter Stripe objected to, when it said; ``idempotency`` is
    True when the idempotency key was already used for a different request."""

    def __init__(self, message: str, *, param: str | None = None, idempotency: bool = False) -> None:
        super().__init__(message)
        self.param = param
        self.idempotency = idempotency


def enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def webhooks_enabled() -> bool:
    return bool(settings.STRIPE_WEBHOOK_SECRET)


@functools.cache
def _client(api_key: str, api_base: str) -> stripe.StripeClient:
    base = {"api": api_base} if api_base else None
    return stripe.StripeClient(api_key, base_addresses=base, max_network_retries=2)  # type: ignore[arg-type]


def client() -> stripe.StripeClient:
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except stripe.IdempotencyError as error:
        raise StripeRefused(f"IdempotencyError: {error.user_message or error}", idempotency=True) from error
    except stripe.InvalidRequestError as error:
        raise StripeRefused(f"InvalidRequestError: {error.user_message or error}", param=error.param) from error
    except stripe.StripeError as error:
        raise StripeFailure(f"{type(error).__name__}: {error.user_message or error}") from error


def customer_create(*, name: str, organization_id: str, idempotency_key: str) -> str:
    customer = _call(
        client().v1.customers.create,
        params={"name": name, "metadata": {"organization_id": organization_id}},
        options={"idempotency_key": idempotency_key},
    )
    return str(customer.id)


@functools.cache
def _meter_id(api_key: str, api_base: str, event_name: str) -> str:
    meters = _call(client().v1.billing.meters.list, params={"status": "active", "limit": 100})
    for meter in meters.auto_paging_iter():
        if meter.event_name == event_name:
            return str(meter.id)
    meter = _call(
        client().v1.billing.meters.create,
        params={
            "display_name": "CallMissed usage (micro-USD)",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        },
        options={"idempotency_key": f"cm-meter-{event_name}"},
    )
    return str(meter.id)


def meter_id() -> str:
    return _meter_id(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_METER_EVENT_NAME)


def meter_event_create(*, customer_id: str, identifier: str, value: int, at: datetime) -> None:
    """Record ``value`` micro-USD for the customer; a resend of the same identifier is a no-op."""
    try:
        client().v1.billing.meter_events.create(
            params={
                "event_name": settings.STRIPE_METER_EVENT_NAME,
                "identifier": identifier,
                "timestamp": int(at.timestamp()),
                "payload": {"stripe_customer_id": customer_id, "value": str(value)},
            },
            options={"idempotency_key": identifier},
        )
    except stripe.InvalidRequestError as error:
        message = str(error.user_message or error).lower()
        if all(hint in message for hint in _DUPLICATE_HINTS):
            return
        raise StripeFailure(f"InvalidRequestError: {error.user_message or error}") from error
    except stripe.StripeError as error:
        raise StripeFailure(f"{type(error).__name__}: {error.user_message or error}") from error


def meter_total(*, customer_id: str, start: datetime, end: datetime) -> int:
    """What Stripe's meter summed for the customer over [start, end), in micro-USD."""
    # Stripe only sums whole minutes.
    start_time, end_time = (int(moment.timestamp()) // 60 * 60 for moment in (start, end))
    summaries = _call(
        client().v1.billing.meters.event_summaries.list,
        meter_id(),
        params={"customer": customer_id, "start_time": start_time, "end_time": end_time},
    )
    return round(sum(float(s.aggregated_value) for s in summaries.auto_paging_iter()))


def checkout_session_create(
    *,
    customer_id: str,
    organization_id: str,
    amount_cents: int,
    currency: str,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> tuple[str, str]:
    session = _call(
        client().v1.checkout.sessions.create,
        params={
            "mode": "payment",
            "customer": customer_id,
            "client_reference_id": organization_id,
            "metadata": {"organization_id": organization_id, "purpose": "top_up"},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": currency,
                        "unit_amount": amount_cents,
                        "product_data": {"name": "CallMissed prepaid credit"},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        },
        options={"idempotency_key": idempotency_key},
    )
    return str(session.id), str(session.url)


def checkout_session_retrieve(*, session_id: str) -> dict[str, Any] | None:
    """Stripe's own copy of a Checkout Session of this account, as a plain dict; None when Stripe
    has no such session (404), which is final. Any other error is a ``StripeFailure``: retry."""
    try:
        session = client().v1.checkout.sessions.retrieve(session_id)
    except stripe.InvalidRequestError as error:
        if error.http_status == 404:
            return None
        raise StripeFailure(f"InvalidRequestError: {error.user_message or error}") from error
    except stripe.StripeError as error:
        raise StripeFailure(f"{type(error).__name__}: {error.user_message or error}") from error
    found: dict[str, Any] = session.to_dict()
    return found


def events_since(*, created_gte: datetime, types: list[str]) -> list[dict[str, Any]]:
    """Recent Stripe events (for webhooks that never arrived), oldest first, as plain dicts."""
    events = _call(
        client().v1.events.list,
        params={"created": {"gte": int(created_gte.timestamp())}, "types": types, "limit": 100},
    )
    found = [event.to_dict() for event in events.auto_paging_iter()]
    # Malformed entries are left for billing.webhooks to refuse; they must not break the sort.
    return sorted(found, key=lambda e: e["created"] if isinstance(e.get("created"), int) else 0)


def webhook_verify(*, body: bytes, signature: str, now: float | None = None) -> Any:
    """The JSON value Stripe signed, parsed; raises ``ValueError`` for a bad signature, a
    signature dated outside [now − max age, now + skew], or a body that is not strict JSON.

    The value's shape is not checked here (``billing.webhooks`` does that)."""
    if not signature.isascii():
        raise ValueError("The Stripe-Signature header is not ASCII.")
    try:
        # Age is checked below against ``now``, so tests can move the clock both ways.
        stripe.WebhookSignature.verify_header(body, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=None)
    except stripe.SignatureVerificationError as error:
        raise ValueError(str(error)) from error
    signed_at = _signature_timestamp(signature)
    current = time.time() if now is None else now
    if signed_at < current - SIGNATURE_MAX_AGE_SECONDS:
        raise ValueError(f"The signature timestamp {signed_at} is older than {SIGNATURE_MAX_AGE_SECONDS} s.")
    if signed_at > current + SIGNATURE_MAX_FUTURE_SECONDS:
        raise ValueError(f"The signature timestamp {signed_at} is in the future.")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError as error:
        raise ValueError("The body is nested too deeply.") from error


def _signature_timestamp(signature: str) -> int:
    # The first ``t=`` item, as the library reads it; verify_header has already parsed it once.
    for item in signature.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            return int(value)
    raise ValueError("The Stripe-Signature header has no timestamp.")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
