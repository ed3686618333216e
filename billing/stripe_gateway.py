"""The only module that talks to Stripe. Every POST carries an idempotency key.

``STRIPE_API_BASE`` points the real ``stripe`` client at a loopback fake in tests. Usage goes to
one Billing Meter, in micro-USD, keyed by customer; the meter is found (or created) by its event
name once per process.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import stripe
from django.conf import settings

# Stripe rejects a meter event whose identifier it has already seen: for a resend, that means
# "already recorded", which is exactly what we wanted.
_DUPLICATE_HINTS = ("identifier", "already")


class StripeFailure(Exception):
    """Stripe answered with an error or could not be reached; safe to retry."""


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
                        "currency": "usd",
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


def events_since(*, created_gte: datetime, types: list[str]) -> list[dict[str, Any]]:
    """Recent Stripe events (for webhooks that never arrived), oldest first, as plain dicts."""
    events = _call(
        client().v1.events.list,
        params={"created": {"gte": int(created_gte.timestamp())}, "types": types, "limit": 100},
    )
    found = [event.to_dict() for event in events.auto_paging_iter()]
    return sorted(found, key=lambda e: e["created"])


def webhook_verify(*, body: bytes, signature: str) -> dict[str, Any]:
    """The event Stripe signed; raises ``ValueError`` for a bad signature or body."""
    try:
        event = stripe.Webhook.construct_event(body, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError as error:
        raise ValueError(str(error)) from error
    return dict(event.to_dict())
