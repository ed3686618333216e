"""Every way a LiveKit session ends deletes its room exactly once, through the one path
(``voice_session_end`` records it, ``voice.delete_room`` deletes it after commit), whoever ends
the session first and whatever ends it again afterwards."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agent_worker import contracts
from voice import lifecycle, services, tasks
from voice.models import VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db


def _worker_reports_the_end(session: VoiceSession) -> None:
    ended = contracts.SessionEnded(
        session_id=str(session.id), reason=contracts.EndReason.USER_LEFT, duration_seconds=12.0
    )
    tasks.session_ended.apply(kwargs={"payload": ended.model_dump(mode="json")}).get()


def _rest_delete(session: VoiceSession) -> None:
    services.voice_session_delete(session=session)


def _reaper_finds_it_lost(session: VoiceSession) -> None:
    VoiceSession.objects.filter(pk=session.pk).update(
        started_at=timezone.now() - timedelta(seconds=session.max_duration_seconds + 3600)
    )
    tasks.reap_sessions.apply().get()


def _billing_runs_out(session: VoiceSession) -> None:
    lifecycle.voice_session_terminate(session_id=str(session.id), reason=contracts.EndReason.INSUFFICIENT_FUNDS)


END_PATHS: dict[str, Callable[[VoiceSession], None]] = {
    "worker": _worker_reports_the_end,
    "rest-delete": _rest_delete,
    "reaper": _reaper_finds_it_lost,
    "billing": _billing_runs_out,
}


@pytest.mark.parametrize("second", list(END_PATHS))
@pytest.mark.parametrize("first", list(END_PATHS))
def test_each_end_path_deletes_the_room_once_whatever_ends_it_again(
    first: str, second: str, livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    session = VoiceSessionFactory.create()
    lifecycle.voice_session_mark_active(session_id=str(session.id), at=timezone.now())
    livekit_server.rooms.add(session.room_name)

    with django_capture_on_commit_callbacks(execute=True):
        END_PATHS[first](session)
    with django_capture_on_commit_callbacks(execute=True):
        END_PATHS[second](VoiceSession.objects.get(pk=session.pk))

    assert [c.request.room for c in livekit_server.calls_to("DeleteRoom")] == [session.room_name]
    assert session.room_name not in livekit_server.rooms
    session.refresh_from_db()
    assert session.room_delete_queued_at is None  # LiveKit confirmed it: the reaper has nothing to requeue


def test_the_worker_end_of_a_legacy_socket_session_has_no_room_to_delete(
    livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    session = VoiceSessionFactory.create(transport=contracts.Transport.WEBSOCKET)
    with django_capture_on_commit_callbacks(execute=True):
        _worker_reports_the_end(session)
    session.refresh_from_db()
    assert session.status == "ended"
    assert livekit_server.calls_to("DeleteRoom") == []
