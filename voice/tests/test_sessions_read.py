from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import AuditLog
from agent_worker import contracts
from voice import lifecycle
from voice.models import TranscriptSegment, VoiceSession
from voice.tests.factories import TranscriptSegmentFactory, VoiceSessionFactory

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"


def _create(client: Any, **body: Any) -> dict[str, Any]:
    response = client.post(SESSIONS, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()


def _pages(client: Any, url: str) -> list[list[str]]:
    pages = []
    while url:
        body = client.get(url).json()
        pages.append([s["id"] for s in body["results"]])
        url = body["next"]
    return pages


def test_list_is_newest_first_with_cursor_pages(api: Any) -> None:
    ids = [_create(api)["id"] for _ in range(5)]
    pages = _pages(api, f"{SESSIONS}?limit=2")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == list(reversed(ids))


def test_pagination_is_stable_while_sessions_are_created(api: Any) -> None:
    ids = [_create(api)["id"] for _ in range(4)]
    first = api.get(f"{SESSIONS}?limit=2").json()
    _create(api)  # a new session arrives between pages
    second = api.get(first["next"]).json()
    assert [s["id"] for s in second["results"]] == list(reversed(ids))[2:4]


def test_list_filters_by_status_time_and_metadata(api: Any) -> None:
    old = VoiceSessionFactory.create(organization=api.org, metadata={"plan": "gold", "tier": 2})
    VoiceSession.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    ended = VoiceSessionFactory.create(organization=api.org, metadata={"plan": "free"})
    lifecycle.voice_session_end(session_id=str(ended.id), reason=contracts.EndReason.COMPLETED)
    live = VoiceSessionFactory.create(organization=api.org, metadata={"plan": "gold"})

    def ids(query: str) -> set[str]:
        response = api.get(f"{SESSIONS}?{query}")
        assert response.status_code == 200, response.content
        return {s["id"] for s in response.json()["results"]}

    assert ids("status=ended") == {str(ended.id)}
    assert ids("status=created") == {str(old.id), str(live.id)}
    since = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_after={since}") == {str(ended.id), str(live.id)}
    assert ids(f"created_before={since}") == {str(old.id)}
    assert ids("metadata.plan=gold") == {str(old.id), str(live.id)}
    assert ids("metadata.tier=2") == {str(old.id)}
    assert ids("metadata.plan=gold&status=created&metadata.tier=2") == {str(old.id)}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=paused", "status"),
        ("created_after=yesterday", "created_after"),
        ("metadata.a__b=1", "metadata.a__b"),
        # A misspelt filter would otherwise list every session as if it had matched.
        ("stauts=ended", "stauts"),
    ],
)
def test_bad_list_filters_are_400(api: Any, query: str, field: str) -> None:
    response = api.get(f"{SESSIONS}?{query}")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_list_query_count_does_not_grow_with_sessions(api: Any) -> None:
    for _ in range(3):
        _create(api)
    with CaptureQueriesContext(connection) as few:
        api.get(SESSIONS)
    for _ in range(10):
        _create(api)
    with CaptureQueriesContext(connection) as many:
        api.get(SESSIONS)
    assert len(many) == len(few)


def test_sessions_are_invisible_to_other_organizations(make_client: Any) -> None:
    owner, stranger = make_client(), make_client()
    session_id = _create(owner)["id"]
    assert stranger.get(SESSIONS).json()["results"] == []
    for path in (f"{SESSIONS}/{session_id}", f"{SESSIONS}/{session_id}/transcripts"):
        response = stranger.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert stranger.delete(f"{SESSIONS}/{session_id}").status_code == 404
    assert VoiceSession.objects.get(pk=session_id).status == "created"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_unknown_session_is_404(api: Any, bad_id: str) -> None:
    assert api.get(f"{SESSIONS}/{bad_id}").status_code == 404


def test_detail_reflects_the_lifecycle(api: Any) -> None:
    session_id = _create(api, max_duration_seconds=120, metadata={"ref": "A-1"})["id"]
    body = api.get(f"{SESSIONS}/{session_id}").json()
    assert body["status"] == "created" and body["started_at"] is None and body["end_reason"] == ""
    assert body["metadata"] == {"ref": "A-1"}

    started = timezone.now()
    lifecycle.voice_session_mark_active(session_id=session_id, at=started, providers="offline")
    lifecycle.voice_session_end(
        session_id=session_id,
        reason=contracts.EndReason.USER_LEFT,
        at=started + timedelta(seconds=42),
        turn_latencies=[
            {"end_of_speech_to_first_audio_ms": 700.0, "llm_ttft_ms": 300.0, "tts_ttfb_ms": 200.0},
            {"end_of_speech_to_first_audio_ms": 900.0, "llm_ttft_ms": 350.0, "tts_ttfb_ms": 220.0},
        ],
    )
    body = api.get(f"{SESSIONS}/{session_id}").json()
    assert body["status"] == "ended"
    assert body["end_reason"] == "user_left"
    assert body["providers"] == "offline"
    assert body["duration_seconds"] == pytest.approx(42.0)
    assert body["latency"]["turns"] == 2
    assert body["latency"]["first_audio_p50_ms"] == 700.0
    assert body["latency"]["first_audio_p95_ms"] == 900.0


def test_transcripts_are_ordered_by_offset_not_arrival(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    TranscriptSegmentFactory.create(
        session=session, role="user", text="second", start_offset_ms=4000, end_offset_ms=5000
    )
    TranscriptSegmentFactory.create(session=session, role="agent", text="first", start_offset_ms=0, end_offset_ms=1500)
    TranscriptSegmentFactory.create(
        session=session, role="agent", text="third", start_offset_ms=5200, end_offset_ms=7000
    )
    body = api.get(f"{SESSIONS}/{session.id}/transcripts").json()
    assert [(s["role"], s["text"]) for s in body["segments"]] == [
        ("agent", "first"),
        ("user", "second"),
        ("agent", "third"),
    ]
    assert body["segments"][1]["start_offset_ms"] == 4000


def test_delete_live_session_tears_down_the_room_and_content(
    api: Any, livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    session_id = _create(api, metadata={"ref": "x"})["id"]
    session = VoiceSession.objects.get(pk=session_id)
    livekit_server.rooms.add(session.room_name)
    TranscriptSegmentFactory.create(session=session, text="private words")

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"{SESSIONS}/{session_id}")
    assert response.status_code == 204

    [call] = livekit_server.calls_to("DeleteRoom")
    assert call.request.room == session.room_name
    assert call.grants.room_create  # the server checked a valid signed admin token
    assert session.room_name not in livekit_server.rooms

    session.refresh_from_db()
    assert session.status == "ended" and session.end_reason == "deleted"
    assert session.room_delete_queued_at is None  # LiveKit confirmed the room gone
    assert session.system_prompt == "" and session.metadata == {}
    assert not TranscriptSegment.objects.filter(session=session).exists()
    [audit] = AuditLog.objects.filter(organization=api.org, action=AuditLog.Action.SESSION_DELETED)
    assert (audit.target, audit.detail) == (session_id, {"api_key": api.key.prefix})
    assert api.get(f"{SESSIONS}/{session_id}").status_code == 404
    assert api.delete(f"{SESSIONS}/{session_id}").status_code == 404
    assert session_id not in {s["id"] for s in api.get(SESSIONS).json()["results"]}


def test_delete_of_a_room_nobody_joined_still_succeeds(
    api: Any, livekit_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    session_id = _create(api)["id"]  # the fake has no such room: LiveKit answers not_found
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{SESSIONS}/{session_id}").status_code == 204
    assert len(livekit_server.calls_to("DeleteRoom")) == 1


def test_delete_of_an_ended_session_does_not_call_livekit(api: Any, livekit_server: Any) -> None:
    session_id = _create(api)["id"]
    lifecycle.voice_session_end(session_id=session_id, reason=contracts.EndReason.COMPLETED)
    assert api.delete(f"{SESSIONS}/{session_id}").status_code == 204
    assert livekit_server.calls == []
    assert VoiceSession.objects.get(pk=session_id).end_reason == "completed"


def test_a_sessions_config_reads_the_same_whichever_way_it_is_written() -> None:
    """The config of a session as pydantic writes it (sessions read from the database) is what
    its serializer's fields write from the same values held in a plain dict."""
    from voice.api.serializers import SessionConfigOutputSerializer

    session = VoiceSessionFactory.build(
        tools=[
            {
                "name": "book_slot",
                "description": "Book a slot.",
                "url": "https://example.com/tools/book",
                "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
                "timeout_ms": 4000,
            }
        ],
        backchannels={"enabled": False, "extra_phrases": ["haan ji", "achha"]},
        max_duration_seconds=900,
    )
    config = session.config()
    by_pydantic = SessionConfigOutputSerializer(config).data
    field_by_field = SessionConfigOutputSerializer(config.model_dump()).data
    assert json.dumps(by_pydantic) == json.dumps(field_by_field)
    assert by_pydantic["tools"][0]["parameters"]["required"] == ["day"]
