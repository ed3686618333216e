"""Structured logs: one JSON object per line, with request, organization and session ids, and no
secret in any line, whatever a careless log call passes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from agent_worker import logs
from outbound import signing

pytestmark = pytest.mark.django_db

STRIPE_KEY = "sk_test_51Hx0123456789abcdefABCDEF"
WEBHOOK_SECRET = signing.generate_secret()  # made here, so nothing secret-shaped is committed
OPENROUTER_KEY = "sk-or-v1-0123456789abcdef0123456789abcdef"
SARVAM_KEY = "sarvam0123456789shapeless"  # no prefix: only the configured value can find it


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The configured console handler (settings.LOGGING), writing into a buffer, at DEBUG."""
    monkeypatch.setenv("SARVAM_API_KEY", SARVAM_KEY)
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    redaction = next(f for f in handler.filters if isinstance(f, logs.RedactSecrets))
    monkeypatch.setattr(redaction, "literals", (SARVAM_KEY,))
    buffer = io.StringIO()
    old_stream = handler.setStream(buffer)  # type: ignore[attr-defined]
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.setLevel(old_level)
        handler.setStream(old_stream)  # type: ignore[attr-defined]


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_an_api_flow_logs_json_lines_with_ids_and_no_secret(api: Any, captured: io.StringIO) -> None:
    log = logging.getLogger("callmissed.tests.careless")
    created = api.post("/v1/voice/sessions", {}, format="json")
    assert created.status_code == 201
    session = created.json()
    token = session["token"]  # a LiveKit JWT
    # Code that logs what it should not: every secret shape, in the message, args, extras, traceback.
    log.info("Authorization: Bearer %s for %s", api.plaintext, session["id"])
    log.info("LiveKit token %s", token, extra={"header": f"Bearer {token}"})
    log.warning(
        "Stripe %s, webhook %s, OpenRouter %s, Sarvam %s", STRIPE_KEY, WEBHOOK_SECRET, OPENROUTER_KEY, SARVAM_KEY
    )
    try:
        raise RuntimeError(f"provider refused key {SARVAM_KEY} / {api.plaintext}")
    except RuntimeError:
        log.exception("Provider call failed")
    api.get(f"/v1/voice/sessions/{session['id']}", HTTP_AUTHORIZATION="Bearer cm_wrong_key_0123456789")
    api.get("/v1/no-such-endpoint")  # Django logs the 404 after the middleware has returned

    text = captured.getvalue()
    for secret in (api.plaintext, token, STRIPE_KEY, WEBHOOK_SECRET, OPENROUTER_KEY, SARVAM_KEY):
        assert secret not in text
    assert "cm_wrong_key_0123456789" not in text
    assert text.count(logs.REDACTED) >= 8
    lines = _lines(captured)  # every line is one JSON object
    careless = [line for line in lines if line["logger"] == "callmissed.tests.careless"]
    assert len(careless) == 4
    assert all(line["request_id"].startswith("req_") for line in careless)
    assert all(line["organization_id"] == str(api.org.id) for line in careless)
    assert "RuntimeError" in careless[-1]["exception"]
    not_found = next(line for line in lines if line["logger"] == "django.request")
    assert not_found["request_id"].startswith("req_") and not_found["level"] == "WARNING"


def test_bound_fields_apply_inside_the_block_only(captured: io.StringIO) -> None:
    log = logging.getLogger("callmissed.tests.context")
    with logs.bound(session_id="sess-1", organization_id="org-1"):
        log.info("inside")
    log.info("outside")
    inside, outside = (line for line in _lines(captured) if line["logger"] == "callmissed.tests.context")
    assert (inside["session_id"], inside["organization_id"]) == ("sess-1", "org-1")
    assert "session_id" not in outside


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("socket ticket cmt_Q2hhbmdlTWVQbGVhc2U used", "cmt_Q2hhbmdlTWVQbGVhc2U"),
        ("broker redis://:hunter2-password@10.0.0.5:6379/0 unreachable", "hunter2-password"),
        ("database postgres://app:s3cret-pass@db.internal/callmissed down", "s3cret-pass"),
    ],
    ids=["socket-ticket", "redis-url-password", "postgres-url-password"],
)
def test_tickets_and_connection_url_passwords_are_masked(line: str, secret: str) -> None:
    masked = logs.redact(line)
    assert secret not in masked and logs.REDACTED in masked
