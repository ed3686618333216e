"""The ``data`` of each event type, built from the same serializers and selectors as the REST API,
so a webhook and ``GET /v1/voice/sessions/{id}`` describe a session alike."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from billing import selectors as billing_selectors
from billing.api.serializers import SessionUsageSerializer
from billing.models import BillingAccount
from billing.pricing import display
from voice import selectors as voice_selectors
from voice.api.serializers import SessionSummarySerializer, TranscriptSegmentSerializer
from voice.models import VoiceSession


def session_started(session: VoiceSession) -> dict[str, Any]:
    return dict(SessionSummarySerializer(session).data)


def session_ended(session: VoiceSession) -> dict[str, Any]:
    """The session as it ended: status, end reason, error, transcript, usage and cost, latency."""
    data = dict(SessionSummarySerializer(session).data)
    data["error"] = session.error_message
    data["transcript"] = TranscriptSegmentSerializer(voice_selectors.transcript_list(session=session), many=True).data
    usage = billing_selectors.session_usage(organization=session.organization, session_id=session.pk)
    data["usage"] = SessionUsageSerializer(usage).data
    data["latency"] = dataclasses.asdict(voice_selectors.voice_session_latency(session=session))
    return data


def low_balance(account: BillingAccount, threshold: Decimal) -> dict[str, Any]:
    return {
        "organization_id": str(account.organization_id),
        "balance": display(account.balance),
        "threshold": display(threshold),
        "currency": "USD",
    }
