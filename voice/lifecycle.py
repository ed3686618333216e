"""Lifecycle writes driven by the agent worker's events and the reaper: status transitions
(created → active → ended|failed, never backwards), applied once per event id."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from agent_worker import contracts
from voice import livekit, ws_control
from voice.models import ProcessedEvent, TranscriptSegment, VoiceSession

logger = logging.getLogger(__name__)


def _first_time(event_id: str, kind: str, session: VoiceSession | None) -> bool:
    """Record an applied event; False when it was applied before (inside the caller's atomic)."""
    _, created = ProcessedEvent.objects.get_or_create(event_id=event_id, defaults={"kind": kind, "session": session})
    return created


def voice_session_mark_active(
    *, session_id: str, at: datetime | None = None, providers: str = "", event_id: str | None = None
) -> VoiceSession | None:
    """created → active. Anything else (already active, ended, failed) is left as it is."""
    with transaction.atomic():
        session = VoiceSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None:
            return None
        if event_id and not _first_time(event_id, contracts.TASK_SESSION_STARTED, session):
            return session
        if session.status == VoiceSession.Status.CREATED:
            session.status = VoiceSession.Status.ACTIVE
            session.started_at = at or timezone.now()
            if providers:
                session.providers = providers
            session.save(update_fields=["status", "started_at", "providers"])
        elif session.started_at is None and session.end_reason != contracts.EndReason.UNJOINED:
            # The end overtook the start (two Celery workers): record when it started, keep the end.
            session.started_at = min(at or timezone.now(), session.ended_at or timezone.now())
            session.providers = session.providers or providers
            session.save(update_fields=["started_at", "providers"])
    return session


def voice_session_end(
    *,
    session_id: str,
    reason: contracts.EndReason,
    at: datetime | None = None,
    duration_seconds: float | None = None,
    turn_latencies: list[dict[str, Any]] | None = None,
    error: str = "",
    event_id: str | None = None,
    delete_room: bool = False,
) -> VoiceSession | None:
    """created|active → ended|failed, once. A later end event may still add figures it lacked."""
    with transaction.atomic():
        session = VoiceSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None:
            return None
        if event_id and not _first_time(event_id, contracts.TASK_SESSION_ENDED, session):
            return session
        fields: list[str] = []
        if session.is_live:
            ended_at = at or timezone.now()
            session.status = (
                VoiceSession.Status.FAILED if reason in contracts.FAILURE_REASONS else VoiceSession.Status.ENDED
            )
            session.end_reason = reason
            session.ended_at = ended_at
            session.error_message = error[:2000]
            fields += ["status", "end_reason", "ended_at", "error_message"]
            if duration_seconds is None and session.started_at is not None:
                duration_seconds = max(0.0, (ended_at - session.started_at).total_seconds())
        if duration_seconds is not None and session.duration_seconds is None:
            session.duration_seconds = duration_seconds
            fields.append("duration_seconds")
        if turn_latencies and not session.turn_latencies:
            session.turn_latencies = turn_latencies
            fields.append("turn_latencies")
        if fields:
            session.save(update_fields=fields)
        room_name = session.room_name
        transport = session.transport
    if delete_room and transport == contracts.Transport.LIVEKIT:
        transaction.on_commit(lambda: _delete_room_quietly(room_name))
    return session


def voice_session_terminate(*, session_id: str, reason: contracts.EndReason, error: str = "") -> VoiceSession | None:
    """End a live session from Django's side (billing, an operator) and tear down its transport:
    the LiveKit room is deleted, so the agent leaves; a legacy socket's consumer is told to close."""
    session = voice_session_end(session_id=session_id, reason=reason, error=error, delete_room=True)
    if session is not None and session.transport == contracts.Transport.WEBSOCKET:
        transaction.on_commit(lambda: ws_control.websocket_session_terminate(session_id=session_id, reason=reason))
    return session


def _delete_room_quietly(room_name: str) -> None:
    try:
        livekit.room_delete(room_name=room_name)
    except Exception:
        # The reaper retries rooms of ended sessions; a failed delete must not fail the caller.
        logger.warning("Could not delete LiveKit room %s", room_name, exc_info=True)


def transcript_segment_add(*, segment: contracts.TranscriptSegment) -> TranscriptSegment | None:
    """Store a final segment once; a redelivered event id returns the stored row unchanged."""
    session = VoiceSession.objects.filter(pk=segment.session_id, content_deleted_at__isnull=True).first()
    if session is None:
        return None
    row, _ = TranscriptSegment.objects.get_or_create(
        event_id=segment.event_id,
        defaults={
            "session": session,
            "role": segment.role,
            "text": segment.text,
            "language": segment.language,
            "start_offset_ms": segment.start_offset_ms,
            "end_offset_ms": max(segment.end_offset_ms, segment.start_offset_ms),
        },
    )
    return row
