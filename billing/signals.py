"""Signals the apps above billing act on, so billing never imports them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent when usage leaves an organization unable to pay (balance exhausted, spend cap reached, a
# failed payment), with ``organization`` and ``reason`` (why, for the people it stops). The voice
# app ends the organization's live sessions with the ``insufficient_funds`` end reason.
balance_exhausted = Signal()

# A prepaid balance fell below BILLING_LOW_BALANCE_USD with one usage debit. Sent inside that
# debit's transaction with ``account`` (locked, balance after the debit), ``threshold`` and
# ``reference`` (the debit's usage event id: one signal per crossing). Customer webhooks report it.
low_balance = Signal()
