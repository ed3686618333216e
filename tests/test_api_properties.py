"""Property-based test of the whole REST API from its published schema.

Schemathesis generates requests for every operation of ``/v1/schema`` — valid ones and, in its
negative mode, ones that break the schema (wrong types, out-of-range numbers, odd strings in
queries, headers and bodies) — and sends them in-process through Django's full request cycle on
PostgreSQL, authenticated with a real API key. Every answer must be below 500, conform to the
schema (status, headers, body), and every error must be the one envelope carrying the request id.

The example count is bounded (``API_PROPERTY_MAX_EXAMPLES`` per operation, default 25) and the
generation is derandomized, so CI runs the same cases in bounded time on every run.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.tests.factories import make_key, make_org
from voice.tests.factories import TranscriptSegmentFactory, VoiceSessionFactory
from webhooks import services as webhook_services
from webhooks.models import EventType, WebhookEndpoint

MAX_EXAMPLES = int(os.environ.get("API_PROPERTY_MAX_EXAMPLES", "50"))
# A session the fixture creates, so reads and deletes by id reach more than the 404 branch.
KNOWN_SESSION_ID = "5e55e55e-0000-4000-8000-000000000001"
# A webhook endpoint with one delivery, for the same reason.
KNOWN_ENDPOINT_ID = "0e0e0e0e-0000-4000-8000-000000000002"


def _cursor(**tokens: str) -> str:
    return base64.b64encode(urlencode(tokens).encode()).decode()


# Values random generation seldom reaches but clients send: mixed into a share of every string,
# integer and number the generator makes, in queries, headers, path segments and bodies.
HOSTILE_STRINGS = [
    "\x00",
    "a\x00b",
    "é",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31",
    "0001-01-01",
    "1e400",
    "NaN",
    "-Infinity",
    "9" * 40,
    _cursor(p="not-a-date"),
    _cursor(p="0001-01-01 00:00:00+14:00"),
    _cursor(o="9" * 30, p="2026-01-01 00:00:00+00:00"),
    _cursor(r="x"),
]
HOSTILE_NUMBERS = [2**53, -(2**53), 2**63, -(2**63) - 1, 10**30, 1e308, -1e308, 0, -1]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 12,
        "dictionaries": {
            "strings": {"values": HOSTILE_STRINGS},
            "numbers": {"values": HOSTILE_NUMBERS},
            "sessions": {"values": [KNOWN_SESSION_ID]},
            "endpoints": {"values": [KNOWN_ENDPOINT_ID]},
        },
        "parameters": {
            "path.session_id": {"dictionary": "sessions", "probability": 0.5},
            "path.endpoint_id": {"dictionary": "endpoints", "probability": 0.5},
        },
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            "dictionaries": {
                "string": {"dictionary": "strings", "probability": 0.2},
                "integer": {"dictionary": "numbers", "probability": 0.2},
                "number": {"dictionary": "numbers", "probability": 0.2},
            },
        },
    }
)
schema = schemathesis.openapi.from_wsgi("/v1/schema", get_wsgi_application(), config=CONFIG)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_key(db: None, livekit_server: Any, settings: Any) -> Iterator[str]:
    # Every generated create stays live for the whole test; the provider-wide cap (a 503 by
    # design) is not what this test is about.
    settings.PROVIDER_MAX_LIVE_SESSIONS = 100_000
    # The WSGI handler closes the database connection after each request, which would end the
    # test's transaction; Django's own test client unhooks the same handler for the same reason.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        # DELETE reaches the LiveKit server API: the loopback fake answers it.
        created = make_key(make_org())
        session = VoiceSessionFactory.create(id=KNOWN_SESSION_ID, organization=created.api_key.organization)
        TranscriptSegmentFactory.create(session=session)
        endpoint = webhook_services.webhook_endpoint_create(
            organization=session.organization, url="https://hooks.example.com/", event_types=["session.started"]
        ).endpoint
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(id=KNOWN_ENDPOINT_ID)
        webhook_services.webhook_event_emit(
            organization_id=session.organization_id,
            event_type=EventType.SESSION_STARTED,
            source=KNOWN_SESSION_ID,
            data=lambda: {"id": KNOWN_SESSION_ID},
        )
        yield created.plaintext
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _assert_envelope(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "fields", "request_id"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], dict)
    assert [error["request_id"]] == response.headers["x-request-id"]


@schema.parametrize()
@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_operation_answers_below_500_with_the_envelope_for_every_error(case: Any, api_key: str) -> None:
    # Public operations ignore the key; the others get past authentication to their real work.
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {api_key}"}
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    _assert_envelope(response)
