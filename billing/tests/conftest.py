"""The loopback Stripe fake wired into settings, and webhook deliveries signed as Stripe signs them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from billing import stripe_gateway
from testsupport.fakes.stripe_api import FakeStripe, signature_header, signed_webhook

STRIPE_KEY = "sk_test_callmissed"
WEBHOOK_SECRET = "whsec_test_callmissed"
WEBHOOK = "/v1/billing/stripe/webhook"


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripe]:
    """One fake Stripe for the run; ``stripe_fake`` resets it for each test."""
    with FakeStripe(api_key=STRIPE_KEY) as fake:
        yield fake


@pytest.fixture
def stripe_fake(settings: Any, stripe_server: FakeStripe) -> FakeStripe:
    stripe_server.reset()
    # The process remembers an account's meter id; the reset account has no meter yet.
    stripe_gateway._meter_id.cache_clear()
    settings.STRIPE_SECRET_KEY = STRIPE_KEY
    settings.STRIPE_API_BASE = stripe_server.api_base
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return stripe_server


def deliver(client: Any, event: Any, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> Any:
    body, signature = signed_webhook(event, secret, timestamp=timestamp)
    return client.generic("POST", WEBHOOK, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def deliver_raw(client: Any, body: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> Any:
    """A delivery of ``body`` exactly as given (not necessarily JSON), correctly signed."""
    signature = signature_header(body, secret, timestamp)
    return client.generic("POST", WEBHOOK, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)
