"""Our Standard Webhooks signatures verify with the official library, and its with ours."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from outbound import signing

BODY = b'{"type":"session.ended","timestamp":"2026-12-02T12:00:00+00:00","data":{"id":"s1"}}'


def test_our_signature_verifies_with_the_standardwebhooks_library() -> None:
    secret = signing.generate_secret()
    headers = signing.sign_headers(secrets=[secret], msg_id="msg_1", timestamp=int(time.time()), body=BODY)
    assert Webhook(secret).verify(BODY, headers)["data"]["id"] == "s1"


def test_the_library_signature_verifies_with_ours() -> None:
    secret = signing.generate_secret()
    now = int(time.time())
    signature = Webhook(secret).sign("msg_2", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    headers = {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(now), "Webhook-Signature": signature}
    signing.verify(secret=secret, headers=headers, body=BODY)


def test_during_a_rotation_a_receiver_with_either_secret_verifies() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    headers = signing.sign_headers(secrets=[new, old], msg_id="msg_3", timestamp=int(time.time()), body=BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers)
        signing.verify(secret=secret, headers=headers, body=BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(BODY, headers)


def test_a_tampered_body_a_stale_timestamp_or_a_wrong_secret_is_refused() -> None:
    secret = signing.generate_secret()
    sent_at = 1_800_000_000
    headers = signing.sign_headers(secrets=[secret], msg_id="msg_4", timestamp=sent_at, body=BODY)
    signing.verify(secret=secret, headers=headers, body=BODY, now=sent_at + 299)
    with pytest.raises(signing.SignatureError, match="tolerance"):
        signing.verify(secret=secret, headers=headers, body=BODY, now=sent_at + 301)
    with pytest.raises(signing.SignatureError, match="No matching"):
        signing.verify(secret=secret, headers=headers, body=BODY.replace(b"s1", b"s2"), now=sent_at)
    with pytest.raises(signing.SignatureError, match="No matching"):
        signing.verify(secret=signing.generate_secret(), headers=headers, body=BODY, now=sent_at)
    with pytest.raises(signing.SignatureError, match="Missing"):
        signing.verify(secret=secret, headers={"webhook-id": "msg_4"}, body=BODY, now=sent_at)


def test_secrets_are_whsec_base64_of_32_random_bytes() -> None:
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(signing.secret_key(secret)) == 32
    assert secret != signing.generate_secret()
    with pytest.raises(ValueError):
        signing.secret_key("not-a-secret")
