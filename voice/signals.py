"""Receivers for other apps' signals (the lower apps never import voice)."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from accounts.models import ApiKey, Organization
from accounts.signals import api_key_revoked
from agent_worker import contracts
from billing.signals import balance_exhausted
from voice import lifecycle
from voice.models import VoiceSession

logger = logging.getLogger(__name__)


@receiver(api_key_revoked, dispatch_uid="voice.end_calls_of_revoked_key")
def end_calls_of_revoked_key(sender: Any, api_key: ApiKey, **kwargs: Any) -> None:
    """A revoked key stops its open legacy-socket calls at once. LiveKit sessions created with it
    go on: the caller joined with a room token, a credential of its own."""
    live = VoiceSession.objects.live().filter(api_key=api_key, transport=contracts.Transport.WEBSOCKET)
    for session_id in live.order_by("pk").values_list("pk", flat=True):
        logger.info("Ending session %s: its API key %s was revoked", session_id, api_key.prefix)
        lifecycle.voice_session_terminate(
            session_id=str(session_id), reason=contracts.EndReason.KEY_REVOKED, error="The API key was revoked."
        )


@receiver(balance_exhausted, dispatch_uid="voice.end_calls_of_exhausted_organization")
def end_calls_of_exhausted_organization(sender: Any, organization: Organization, reason: str, **kwargs: Any) -> None:
    """An organization that can no longer pay stops talking: every live session ends at once."""
    # Sessions are locked one by one in primary-key order, as every other path does: no deadlock.
    live = VoiceSession.objects.live().filter(organization=organization).order_by("pk")
    for session_id in live.values_list("pk", flat=True):
        logger.info("Ending session %s: %s", session_id, reason)
        lifecycle.voice_session_terminate(
            session_id=str(session_id), reason=contracts.EndReason.INSUFFICIENT_FUNDS, error=reason
        )
