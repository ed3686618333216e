"""Endpoint signing secrets at rest: Fernet (AES-128-CBC + HMAC) under a key derived from
``WEBHOOK_SECRETS_KEY`` (default: ``SECRET_KEY``), so a database dump alone does not sign."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet
from django.conf import settings


def _fernet() -> Fernet:
    material = (settings.WEBHOOK_SECRETS_KEY or settings.SECRET_KEY).encode()
    key = hashlib.sha256(b"callmissed.webhooks.secrets:" + material).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()
