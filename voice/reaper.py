"""The reaper: closes sessions whose agent never came or went silent, so none stays live forever.

Run by Celery beat (``voice.reap_sessions``). Every close goes through ``voice_session_end``, so a
session the worker ends at the same moment is closed exactly once, whichever wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from agent_worker import contracts
from voice import lifecycle
from voice.models import VoiceSession

logger = logging.getLogger(__name__)

# One tick closes at most this many sessions of each kind; the next tick (30 s later) takes the rest.
BATCH_SIZE = 500


@dataclass
class ReapResult:
    unjoined: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    rooms_to_delete: list[str] = field(default_factory=list)


def voice_sessions_reap(*, now: datetime | None = None) -> ReapResult:
    """Fail sessions nobody joined before their deadline (``unjoined``) and close active sessions
    past their maximum duration plus a grace period (``lost``: the worker stopped reporting).

    Returns the LiveKit rooms the caller should delete; the Celery task deletes them with retries.
    """
    now = now or timezone.now()
    result = ReapResult()

    unjoined = VoiceSession.objects.filter(status=VoiceSession.Status.CREATED, join_deadline__lt=now).values_list(
        "pk", flat=True
    )[:BATCH_SIZE]
    for session_id in unjoined:
        session = lifecycle.voice_session_end(
            session_id=str(session_id),
            reason=contracts.EndReason.UNJOINED,
            at=now,
            error="Nobody joined the session before its join deadline.",
        )
        if session is not None and session.end_reason == contracts.EndReason.UNJOINED:
            result.unjoined.append(str(session_id))
            _collect_room(result, session)

    grace = timedelta(seconds=settings.SESSION_LOST_GRACE_SECONDS)
    # Live sessions are few (capped per provider account): narrow in SQL, decide exactly here,
    # which also keeps the query portable to the SQLite development default.
    candidates = VoiceSession.objects.filter(
        status=VoiceSession.Status.ACTIVE,
        started_at__lt=now - grace,
    ).values_list("pk", "started_at", "max_duration_seconds")
    lost = [
        (pk, started_at, max_duration)
        for pk, started_at, max_duration in candidates
        if started_at is not None and started_at + timedelta(seconds=max_duration) + grace < now
    ][:BATCH_SIZE]
    for session_id, started_at, max_duration in lost:
        # The agent enforces the maximum duration, so the conversation cannot have run longer.
        duration = min(float(max_duration), max(0.0, (now - started_at).total_seconds()))
        session = lifecycle.voice_session_end(
            session_id=str(session_id),
            reason=contracts.EndReason.LOST,
            at=now,
            duration_seconds=duration,
            error="The agent stopped reporting before the session ended.",
        )
        if session is not None and session.end_reason == contracts.EndReason.LOST:
            result.lost.append(str(session_id))
            _collect_room(result, session)

    if result.unjoined or result.lost:
        logger.info("Reaped %d unjoined and %d lost sessions", len(result.unjoined), len(result.lost))
    return result


def _collect_room(result: ReapResult, session: VoiceSession) -> None:
    if session.transport == contracts.Transport.LIVEKIT:
        result.rooms_to_delete.append(session.room_name)
