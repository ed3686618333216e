"""Signals other apps act on, so accounts never imports them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent once a key's revocation has committed, with ``api_key`` (the revoked ``ApiKey``). The
# voice app ends the calls still open with it.
api_key_revoked = Signal()
