"""Writes and rules for voice sessions and transcripts."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, AuditLog, Organization
from agent_worker import contracts
from billing import services as billing_services
from callmissed.errors import CapacityExhausted, IdempotencyConflict
from voice import lifecycle, livekit
from voice.models import TranscriptSegment, VoiceSession

logger = logging.getLogger(__name__)

CAPACITY_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class CreatedSession:
    session: VoiceSession
    token: str
    ws_url: str
    replayed: bool  # True when an Idempotency-Key returned an earlier session


def _fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _token_for(session: VoiceSession) -> str:
    dispatch = contracts.DispatchMetadata(session_id=str(session.id), config=session.config())
    return livekit.participant_token(room_name=session.room_name, identity=f"user-{session.id}", dispatch=dispatch)


def _check_provider_capacity() -> None:
    live = VoiceSession.objects.holding_capacity(now=timezone.now()).count()
    if live >= settings.PROVIDER_MAX_LIVE_SESSIONS:
        raise CapacityExhausted(retry_after=CAPACITY_RETRY_AFTER_SECONDS)


def voice_session_create(
    *,
    organization: Organization,
    config: dict[str, Any],
    api_key: ApiKey | None = None,
    transport: contracts.Transport = contracts.Transport.LIVEKIT,
    idempotency_key: str | None = None,
) -> CreatedSession:
    """Admit and record a new session; ``config`` is the output of ``SessionConfigSerializer``."""
    fingerprint = _fingerprint(config)
    if idempotency_key:
        earlier = VoiceSession.objects.filter(organization=organization, idempotency_key=idempotency_key).first()
        if earlier is not None:
            return _replay(earlier, fingerprint)

    now = timezone.now()
    try:
        with transaction.atomic():
            # Serialise admission per organization so two racing creates cannot both pass the caps.
            Organization.objects.select_for_update().filter(pk=organization.pk).first()
            lifecycle.voice_sessions_expire_unjoined(organization=organization)
            billing_services.session_admission_check(organization=organization)
            _check_provider_capacity()
            session = VoiceSession(
                organization=organization,
                api_key=api_key,
                transport=transport,
                room_name=livekit.new_room_name(),
                system_prompt=config["system_prompt"],
                voice=config["voice"],
                language=config["language"],
                llm_model=config["llm_model"],
                tts_provider=config["tts_provider"],
                max_duration_seconds=config["max_duration_seconds"],
                metadata=config.get("metadata") or {},
                idempotency_key=idempotency_key or None,
                request_fingerprint=fingerprint,
                join_deadline=now + timedelta(seconds=settings.SESSION_JOIN_TIMEOUT_SECONDS),
            )
            session.full_clean()
            session.save()
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the race: answer with its session.
        earlier = VoiceSession.objects.get(organization=organization, idempotency_key=idempotency_key)
        return _replay(earlier, fingerprint)

    token = _token_for(session) if transport == contracts.Transport.LIVEKIT else ""
    return CreatedSession(session=session, token=token, ws_url=settings.LIVEKIT_URL, replayed=False)


def _replay(session: VoiceSession, fingerprint: str) -> CreatedSession:
    if session.request_fingerprint != fingerprint:
        raise IdempotencyConflict()
    token = _token_for(session) if session.transport == contracts.Transport.LIVEKIT else ""
    return CreatedSession(session=session, token=token, ws_url=settings.LIVEKIT_URL, replayed=True)


def voice_session_delete(*, session: VoiceSession, actor_key: ApiKey | None = None) -> None:
    """End the session if live, then drop its content.

    The end is recorded here whatever LiveKit's state: the room's deletion is queued after commit
    and retried until LiveKit confirms it, and a legacy socket's consumer is told to close (it
    also notices the ended row by itself). The row stays (without prompt, metadata or transcripts)
    because usage and charges refer to it.
    """
    with transaction.atomic():
        lifecycle.voice_session_terminate(session_id=str(session.id), reason=contracts.EndReason.DELETED)
        session.refresh_from_db()
        TranscriptSegment.objects.filter(session=session).delete()
        session.system_prompt = ""
        session.metadata = {}
        session.content_deleted_at = timezone.now()
        session.save(update_fields=["system_prompt", "metadata", "content_deleted_at"])
        AuditLog.objects.create(
            organization=session.organization,
            action=AuditLog.Action.SESSION_DELETED,
            target=str(session.id),
            detail={"api_key": actor_key.prefix if actor_key else ""},
        )
