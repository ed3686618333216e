"""API key format: ``cm_`` + 43 url-safe characters (256 bits). Hashing is plain SHA-256:
the secret is uniformly random, so a slow password hash would add latency to every request
without adding security."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "cm_"
TICKET_PREFIX = "cmt_"  # a dashboard's one-connection WebSocket ticket, never an API key
_SECRET_BYTES = 32
VISIBLE_PREFIX_CHARS = 10  # "cm_" + 7 characters, enough to tell keys apart in a list


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and 20 <= len(value) <= 100


def generate_ticket() -> str:
    return TICKET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def looks_like_ticket(value: str) -> bool:
    return value.startswith(TICKET_PREFIX) and 20 <= len(value) <= 100
