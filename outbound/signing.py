"""Standard Webhooks signatures (https://www.standardwebhooks.com/, spec v1).

A message is signed as ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the
base64-decoded part of a ``whsec_<base64>`` secret, and travels in three headers:
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (space-separated
signatures, one per secret in force, so a receiver holding either secret verifies during a
rotation). Receivers can verify with the ``standardwebhooks`` or ``svix`` libraries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes
DEFAULT_TOLERANCE_SECONDS = 300  # the spec's and the reference libraries' 5 minutes

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class SignatureError(Exception):
    """A message that does not verify: missing headers, a timestamp out of tolerance, no match."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret; ``ValueError`` when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("A webhook secret starts with whsec_.")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("A webhook secret is whsec_ followed by base64.") from None
    if not key:
        raise ValueError("A webhook secret may not be empty.")
    return key


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``{id}.{timestamp}.{body}``."""
    signed = msg_id.encode() + b"." + str(int(timestamp)).encode() + b"." + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(*, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret in force (newest first)."""
    if not secrets:
        raise ValueError("At least one secret is needed to sign.")
    signatures = " ".join(sign(secret=s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets)
    return {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(int(timestamp)), HEADER_SIGNATURE: signatures}


def verify(
    *,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Raise ``SignatureError`` unless one ``v1`` signature in the headers matches ``secret`` and
    the timestamp is within ``tolerance_seconds`` of ``now`` (replay protection)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    raw_timestamp = lowered.get(HEADER_TIMESTAMP)
    signatures = lowered.get(HEADER_SIGNATURE)
    if not (msg_id and raw_timestamp and signatures):
        raise SignatureError("Missing webhook-id, webhook-timestamp or webhook-signature.")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer.") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError("webhook-timestamp is outside the tolerance.")
    expected = sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body)
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise SignatureError("No matching signature.")
