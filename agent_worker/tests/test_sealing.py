"""The dispatch metadata is sealed for the agent: readable with the shared secret only, and
any change to it is refused."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_worker import sealing

SECRET = "livekit-api-secret-of-this-deployment"


@given(st.text())
def test_what_is_sealed_opens_unchanged(plaintext: str) -> None:
    sealed = sealing.seal(plaintext, secret=SECRET)
    assert sealed.startswith(sealing.PREFIX)
    assert sealing.unseal(sealed, secret=SECRET) == plaintext


def test_the_same_metadata_seals_differently_each_time() -> None:
    """A fresh nonce per token: two sessions with one prompt are not linkable by their tokens."""
    assert sealing.seal("{}", secret=SECRET) != sealing.seal("{}", secret=SECRET)


@pytest.mark.parametrize(
    "token",
    [
        '{"session_id": "x"}',  # plain JSON: not from us
        sealing.PREFIX,
        sealing.PREFIX + "not base64 !",
        sealing.PREFIX + base64.urlsafe_b64encode(b"short").decode(),
    ],
)
def test_anything_else_is_refused(token: str) -> None:
    with pytest.raises(sealing.SealError):
        sealing.unseal(token, secret=SECRET)


def test_another_secret_or_a_flipped_bit_is_refused() -> None:
    sealed = sealing.seal('{"session_id": "x"}', secret=SECRET)
    with pytest.raises(sealing.SealError, match="LIVEKIT_API_SECRET"):
        sealing.unseal(sealed, secret="another")
    raw = bytearray(base64.urlsafe_b64decode(sealed.removeprefix(sealing.PREFIX)))
    raw[-1] ^= 1
    with pytest.raises(sealing.SealError):
        sealing.unseal(sealing.PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode(), secret=SECRET)
