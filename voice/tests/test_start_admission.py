"""A token outlives its session, so the agent can be dispatched to a room the platform no longer
admits. When the worker reports ``session_started`` for such a session (or an unknown one), the
platform deletes the room, which disconnects the agent and the caller."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import TestCase

from agent_worker import contracts
from voice import lifecycle, tasks
from voice.models import VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def _start(session_id: str, *, room_name: str = "", at: datetime | None = None) -> None:
    event = contracts.SessionStarted(
        session_id=session_id, providers="offline", room_name=room_name, occurred_at=at or datetime.now(UTC)
    )
    # The room's deletion is queued after commit, as the real task's (outside a transaction) is at once.
    with TestCase.captureOnCommitCallbacks(execute=True):
        tasks.session_started.apply(kwargs={"payload": event.model_dump(mode="json")}).get()


def _deleted(livekit_server: Any) -> list[str]:
    return [c.request.room for c in livekit_server.calls_to("DeleteRoom")]


def _session_in_room(livekit_server: Any, **fields: Any) -> VoiceSession:
    session = VoiceSessionFactory.create(**fields)
    livekit_server.rooms.add(session.room_name)
    return session


@pytest.mark.parametrize(
    "reason",
    [
        contracts.EndReason.DELETED,
        contracts.EndReason.INSUFFICIENT_FUNDS,
        contracts.EndReason.UNJOINED,
        contracts.EndReason.LOST,
    ],
)
def test_a_start_of_a_session_the_platform_ended_deletes_its_room_and_changes_nothing(
    livekit_server: Any, reason: contracts.EndReason
) -> None:
    session = _session_in_room(livekit_server)
    lifecycle.voice_session_end(session_id=str(session.id), reason=reason)
    before = VoiceSession.objects.get(pk=session.pk)

    _start(str(session.id), room_name=session.room_name)

    after = VoiceSession.objects.get(pk=session.pk)
    assert (after.status, after.end_reason, after.started_at, after.providers) == (
        before.status,
        reason,
        None,
        "",
    )
    assert _deleted(livekit_server) == [session.room_name]
    assert session.room_name not in livekit_server.rooms


def test_a_token_reused_after_the_conversation_ended_gets_its_room_deleted(livekit_server: Any) -> None:
    session = _session_in_room(livekit_server)
    _start(str(session.id), at=T0)
    ended = contracts.SessionEnded(
        session_id=str(session.id),
        reason=contracts.EndReason.USER_LEFT,
        duration_seconds=42.0,
        occurred_at=T0 + timedelta(seconds=42),
    )
    tasks.session_ended.apply(kwargs={"payload": ended.model_dump(mode="json")}).get()
    assert _deleted(livekit_server) == []

    # The caller joins again with the same token: LiveKit recreates the room and dispatches the agent.
    _start(str(session.id), at=T0 + timedelta(minutes=3))

    session.refresh_from_db()
    assert (session.status, session.started_at, session.ended_at) == ("ended", T0, T0 + timedelta(seconds=42))
    assert _deleted(livekit_server) == [session.room_name]


def test_a_caller_joining_after_the_deadline_fails_the_session_even_before_the_reaper_runs(
    livekit_server: Any,
) -> None:
    session = _session_in_room(livekit_server, join_deadline=T0)

    _start(str(session.id), at=T0 + timedelta(seconds=5))

    session.refresh_from_db()
    assert (session.status, session.end_reason, session.started_at) == ("failed", "unjoined", None)
    assert _deleted(livekit_server) == [session.room_name]


def test_a_start_for_an_unknown_session_deletes_the_room_it_names(livekit_server: Any) -> None:
    livekit_server.rooms.add("cm_not_ours")
    _start("00000000-0000-0000-0000-000000000000", room_name="cm_not_ours")
    assert _deleted(livekit_server) == ["cm_not_ours"]
    assert not VoiceSession.objects.exists()


def test_a_start_of_a_waiting_session_runs_and_keeps_its_room(livekit_server: Any) -> None:
    session = _session_in_room(livekit_server)
    _start(str(session.id), room_name=session.room_name)
    session.refresh_from_db()
    assert session.status == "active"
    assert _deleted(livekit_server) == []


def test_an_old_worker_payload_without_a_room_name_still_applies() -> None:
    session = VoiceSessionFactory.create()
    payload = {"event_id": "e-old", "session_id": str(session.id), "providers": "offline"}
    tasks.session_started.apply(kwargs={"payload": payload}).get()
    session.refresh_from_db()
    assert session.status == "active"
