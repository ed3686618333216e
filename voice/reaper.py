"""The reaper: closes sessions whose agent never came or went silent, so none stays live forever,
and sees every ended session's LiveKit room deleted.

Run by Celery beat (``voice.reap_sessions``). Join deadlines are also expired at admission
(``lifecycle.voice_sessions_expire_unjoined``, the organization's) and by API reads for the
sessions they show (``lifecycle.voice_sessions_expire_shown``), so a deployment without beat never
has a session counting against the caps, or shown waiting, past its deadline. Every close goes through
``voice_session_end``, so a session the worker ends at the same moment is closed exactly once.
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
    rooms_requeued: list[str] = field(default_factory=list)


def voice_sessions_reap(*, now: datetime | None = None) -> ReapResult:
    """Fail sessions nobody joined before their deadline (``unjoined``), close active sessions
    past their maximum duration plus a grace period (``lost``: the worker stopped reporting), and
    queue again the room deletions LiveKit has not confirmed. Every room is deleted by the
    ``voice.delete_room`` task, queued when the session ends."""
    now = now or timezone.now()
    result = ReapResult()
    result.unjoined = [str(s.pk) for s in lifecycle.voice_sessions_expire_unjoined(now=now, limit=BATCH_SIZE)]

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
            delete_room=True,
        )
        if session is not None and session.end_reason == contracts.EndReason.LOST:
            result.lost.append(str(session_id))

    result.rooms_requeued = lifecycle.voice_sessions_room_delete_requeue(now=now, limit=BATCH_SIZE)
    if result.unjoined or result.lost or result.rooms_requeued:
        logger.info(
            "Reaped %d unjoined and %d lost sessions; queued %d room deletions again",
            len(result.unjoined),
            len(result.lost),
            len(result.rooms_requeued),
        )
    return result
