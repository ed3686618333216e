"""The dispatch metadata, sealed for the agent.

Django puts each session's dispatch (its id, the customer's system prompt, greeting and tool
URLs) into the agent dispatch of the caller's LiveKit token, and LiveKit hands it to the agent's
job. A JWT is signed, not encrypted: whoever holds the token — the customer's own end user, in
a browser — could read it. The prompt and the tool endpoints are the customer's, not their
callers', so the metadata travels sealed with AES-GCM under a key derived (HKDF) from the
LiveKit API secret, which Django (to mint tokens) and the worker (to join rooms) already share.
Nothing new to configure, and no extra call to LiveKit on the session-create path.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "cmseal1."
_INFO = b"callmissed agent dispatch metadata v1"
_NONCE_BYTES = 12


class SealError(ValueError):
    """Metadata that is not sealed, or not by a holder of this secret."""


@functools.lru_cache(maxsize=4)  # one secret per deployment: derived once, not on every create
def _key(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())


def seal(plaintext: str, *, secret: str) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_key(secret)).encrypt(nonce, plaintext.encode(), _INFO)
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(token: str, *, secret: str) -> str:
    if not token.startswith(PREFIX):
        raise SealError("the metadata is not sealed")
    try:
        raw = base64.urlsafe_b64decode(token.removeprefix(PREFIX).encode())
        plaintext = AESGCM(_key(secret)).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _INFO)
        return plaintext.decode()
    except (binascii.Error, InvalidTag, ValueError, UnicodeDecodeError):
        raise SealError(
            "the sealed metadata does not open with this LIVEKIT_API_SECRET (Django and the worker must share it)"
        ) from None
