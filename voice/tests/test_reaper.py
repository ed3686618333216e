"""The reaper closes sessions nobody joined and sessions whose agent went silent, and deletes
their rooms on the (loopback) LiveKit server."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agent_worker import contracts
from voice import lifecycle, tasks
from voice.models import VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db


def _deleted_rooms(server: Any) -> list[str]:
    return [c.request.room for c in server.calls_to("DeleteRoom")]


def reap(on_commit: Any) -> dict[str, int]:
    """One reaper run; the room deletions it queues go out when its transactions commit."""
    with on_commit(execute=True):
        result: dict[str, int] = tasks.reap_sessions.apply().get()
    return result


def test_a_session_nobody_joined_before_its_deadline_fails_as_unjoined(
    livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    late = VoiceSessionFactory.create(join_deadline=now - timedelta(seconds=1))
    waiting = VoiceSessionFactory.create(join_deadline=now + timedelta(seconds=30))
    livekit_server.rooms.update({late.room_name, waiting.room_name})

    assert reap(django_capture_on_commit_callbacks) == {"unjoined": 1, "lost": 0}

    late.refresh_from_db()
    waiting.refresh_from_db()
    assert (late.status, late.end_reason) == ("failed", "unjoined")
    assert late.ended_at is not None and late.started_at is None
    assert waiting.status == "created"
    assert _deleted_rooms(livekit_server) == [late.room_name]
    assert livekit_server.rooms == {waiting.room_name}


def test_an_active_session_past_max_duration_plus_grace_is_closed_as_lost(
    livekit_server: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.SESSION_LOST_GRACE_SECONDS = 120
    now = timezone.now()
    silent = VoiceSessionFactory.create(max_duration_seconds=60)
    lifecycle.voice_session_mark_active(session_id=str(silent.id), at=now - timedelta(seconds=60 + 121))
    in_grace = VoiceSessionFactory.create(max_duration_seconds=60)
    lifecycle.voice_session_mark_active(session_id=str(in_grace.id), at=now - timedelta(seconds=60 + 100))
    livekit_server.rooms.update({silent.room_name, in_grace.room_name})

    assert reap(django_capture_on_commit_callbacks) == {"unjoined": 0, "lost": 1}

    silent.refresh_from_db()
    in_grace.refresh_from_db()
    assert (silent.status, silent.end_reason) == ("failed", "lost")
    # It cannot have talked longer than the agent allows.
    assert silent.duration_seconds == 60.0
    assert in_grace.status == "active"
    assert _deleted_rooms(livekit_server) == [silent.room_name]


def test_the_reaper_leaves_ended_sessions_and_a_second_run_does_nothing(
    livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    old = timezone.now() - timedelta(hours=2)
    ended = VoiceSessionFactory.create(join_deadline=old)
    lifecycle.voice_session_end(session_id=str(ended.id), reason=contracts.EndReason.COMPLETED, at=old)
    unjoined = VoiceSessionFactory.create(join_deadline=old)

    assert reap(django_capture_on_commit_callbacks) == {"unjoined": 1, "lost": 0}
    assert reap(django_capture_on_commit_callbacks) == {"unjoined": 0, "lost": 0}

    ended.refresh_from_db()
    assert (ended.status, ended.end_reason) == ("ended", "completed")
    # The unjoined room was never created on the server: the delete is still made, and NOT_FOUND is fine.
    assert _deleted_rooms(livekit_server) == [unjoined.room_name]


def test_websocket_sessions_are_reaped_without_a_room_call(
    livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ws = VoiceSessionFactory.create(
        transport=contracts.Transport.WEBSOCKET, join_deadline=timezone.now() - timedelta(seconds=5)
    )
    reap(django_capture_on_commit_callbacks)
    ws.refresh_from_db()
    assert (ws.status, ws.end_reason) == ("failed", "unjoined")
    assert _deleted_rooms(livekit_server) == []


def test_a_worker_end_racing_the_reaper_keeps_the_first_reason(
    livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    session = VoiceSessionFactory.create(join_deadline=timezone.now() - timedelta(seconds=1))
    lifecycle.voice_session_end(session_id=str(session.id), reason=contracts.EndReason.USER_LEFT)
    reap(django_capture_on_commit_callbacks)
    assert VoiceSession.objects.get(pk=session.pk).end_reason == "user_left"
    assert _deleted_rooms(livekit_server) == []


def test_delete_room_grants_room_create_on_the_wire(livekit_server: Any) -> None:
    livekit_server.rooms.add("cm_room_x")
    tasks.delete_room.apply(kwargs={"room_name": "cm_room_x"}).get()
    (call,) = livekit_server.calls_to("DeleteRoom")
    assert call.grants.room_create
    assert "cm_room_x" not in livekit_server.rooms
