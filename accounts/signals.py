"""Signals other apps act on, so accounts never imports them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside the transaction that creates an organization, with ``organization``, ``actor`` (the
# user who created it, or None), ``starter_credit`` (False when the signup's rules refused the
# free credit) and ``credit_claim`` (who the credit is for: one per person, empty for the
# organization itself). Billing opens the organization's account in the same transaction, so an
# organization never exists without one.
organization_created = Signal()

# Sent once a key's revocation has committed, with ``api_key`` (the revoked ``ApiKey``). The
# voice app ends the calls still open with it.
api_key_revoked = Signal()
