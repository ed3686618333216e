"""The worker-event tasks applied in-process (eager): validation, idempotency, status rules,
and what the REST API shows afterwards. The broker path is in test_celery_live.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import TestCase

from agent_worker import contracts
from billing.models import LedgerEntry, UsageRecord
from billing.tests.support import KIMI_TURN, usage_event
from voice import lifecycle, tasks
from voice.models import ProcessedEvent, TranscriptSegment, VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def _send(task: Any, event: contracts.WorkerEvent) -> None:
    task.apply(kwargs={"payload": event.model_dump(mode="json")}).get()


def _segment(
    session: VoiceSession, start: int, text: str, role: str = "user", **kw: Any
) -> contracts.TranscriptSegment:
    return contracts.TranscriptSegment(
        session_id=str(session.id),
        role=role,  # type: ignore[arg-type]
        text=text,
        language="hi-IN",
        start_offset_ms=start,
        end_offset_ms=start + 900,
        **kw,
    )


def _ended(session: VoiceSession, reason: contracts.EndReason, **kw: Any) -> contracts.SessionEnded:
    defaults: dict[str, Any] = {"duration_seconds": 42.5, "occurred_at": T0 + timedelta(seconds=43)}
    return contracts.SessionEnded(session_id=str(session.id), reason=reason, **{**defaults, **kw})


def test_started_event_makes_the_session_active_once() -> None:
    session = VoiceSessionFactory.create()
    started = contracts.SessionStarted(session_id=str(session.id), providers="offline", occurred_at=T0)
    _send(tasks.session_started, started)
    _send(tasks.session_started, started)  # redelivered

    session.refresh_from_db()
    assert (session.status, session.started_at, session.providers) == ("active", T0, "offline")
    assert ProcessedEvent.objects.filter(event_id=started.event_id).count() == 1


def test_ended_event_records_reason_duration_and_latency_and_never_goes_back() -> None:
    session = VoiceSessionFactory.create()
    _send(tasks.session_started, contracts.SessionStarted(session_id=str(session.id), occurred_at=T0))
    latency = contracts.TurnLatency(end_of_speech_to_first_audio_ms=640.0, llm_ttft_ms=210.0, tts_ttfb_ms=180.0)
    _send(tasks.session_ended, _ended(session, contracts.EndReason.USER_LEFT, turn_latencies=[latency]))

    # A late "started" (another event id) and a second "ended" with another reason change nothing.
    _send(tasks.session_started, contracts.SessionStarted(session_id=str(session.id), occurred_at=T0))
    _send(tasks.session_ended, _ended(session, contracts.EndReason.MAX_DURATION, duration_seconds=300))

    session.refresh_from_db()
    assert session.status == "ended"
    assert session.end_reason == "user_left"
    assert session.ended_at == T0 + timedelta(seconds=43)
    assert session.duration_seconds == 42.5
    assert session.turn_latencies == [latency.model_dump()]


def test_a_start_overtaken_by_the_end_keeps_its_time_and_providers_but_not_its_status() -> None:
    session = VoiceSessionFactory.create()
    _send(tasks.session_ended, _ended(session, contracts.EndReason.COMPLETED))
    _send(
        tasks.session_started, contracts.SessionStarted(session_id=str(session.id), providers="offline", occurred_at=T0)
    )
    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("ended", "completed")
    assert (session.started_at, session.providers, session.duration_seconds) == (T0, "offline", 42.5)


def test_a_caller_joining_after_the_deadline_gets_the_room_deleted(livekit_server: Any) -> None:
    session = VoiceSessionFactory.create()
    livekit_server.rooms.add(session.room_name)
    lifecycle.voice_session_end(session_id=str(session.id), reason=contracts.EndReason.UNJOINED)
    with TestCase.captureOnCommitCallbacks(execute=True):
        _send(tasks.session_started, contracts.SessionStarted(session_id=str(session.id), occurred_at=T0))
    session.refresh_from_db()
    assert (session.status, session.started_at) == ("failed", None)
    # The agent is disconnected by the deletion and ends its conversation.
    assert [c.request.room for c in livekit_server.calls_to("DeleteRoom")] == [session.room_name]
    assert session.room_name not in livekit_server.rooms


def test_failure_reasons_mark_the_session_failed_with_the_error() -> None:
    session = VoiceSessionFactory.create()
    _send(tasks.session_started, contracts.SessionStarted(session_id=str(session.id), occurred_at=T0))
    _send(
        tasks.session_ended,
        _ended(session, contracts.EndReason.PROVIDER_ERROR, error="Sarvam STT refused the stream (401)"),
    )
    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("failed", "provider_error")
    assert session.error_message == "Sarvam STT refused the stream (401)"


def test_transcripts_are_stored_once_and_ordered_by_offset_whatever_the_arrival_order(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    greeting = _segment(session, 0, "Namaste! How can I help?", role="agent")
    question = _segment(session, 2000, "What time is it?")
    answer = _segment(session, 3500, "It is ten o'clock.", role="agent")
    for event in (answer, greeting, question, answer, greeting):  # reordered, with duplicates
        _send(tasks.transcript_segment, event)

    assert TranscriptSegment.objects.filter(session=session).count() == 3
    body = api.get(f"/v1/voice/sessions/{session.id}/transcripts").json()
    assert [(s["role"], s["text"], s["start_offset_ms"]) for s in body["segments"]] == [
        ("agent", "Namaste! How can I help?", 0),
        ("user", "What time is it?", 2000),
        ("agent", "It is ten o'clock.", 3500),
    ]
    assert body["segments"][1]["language"] == "hi-IN"


def test_rest_detail_reflects_the_lifecycle(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    assert api.get(f"/v1/voice/sessions/{session.id}").json()["status"] == "created"

    _send(
        tasks.session_started, contracts.SessionStarted(session_id=str(session.id), providers="offline", occurred_at=T0)
    )
    body = api.get(f"/v1/voice/sessions/{session.id}").json()
    assert (body["status"], body["providers"], body["ended_at"]) == ("active", "offline", None)

    turns = [contracts.TurnLatency(end_of_speech_to_first_audio_ms=ms) for ms in (500.0, 700.0, 900.0)]
    _send(tasks.session_ended, _ended(session, contracts.EndReason.COMPLETED, turn_latencies=turns))
    body = api.get(f"/v1/voice/sessions/{session.id}").json()
    assert body["status"] == "ended"
    assert body["end_reason"] == "completed"
    assert body["started_at"] == "2026-01-05T10:00:00Z"
    assert body["ended_at"] == "2026-01-05T10:00:43Z"
    assert body["duration_seconds"] == 42.5
    assert body["latency"]["turns"] == 3
    assert body["latency"]["first_audio_p50_ms"] == 700.0


@pytest.mark.parametrize(
    ("task", "payload", "field"),
    [
        (tasks.session_started, {"event_id": "e1"}, "session_id"),
        (tasks.transcript_segment, {"session_id": "SESSION", "role": "robot", "text": "x"}, "role"),
        (
            tasks.transcript_segment,
            {"session_id": "SESSION", "role": "user", "text": "x", "start_offset_ms": -5},
            "start_offset_ms",
        ),
        (tasks.session_ended, {"session_id": "SESSION", "reason": "bored", "duration_seconds": 1}, "reason"),
        (tasks.session_ended, {"session_id": "not-a-uuid", "reason": "completed", "duration_seconds": 1}, "UUID"),
    ],
)
def test_invalid_payloads_are_dropped_with_a_log_naming_the_field(
    caplog: pytest.LogCaptureFixture, task: Any, payload: dict[str, Any], field: str
) -> None:
    session = VoiceSessionFactory.create()
    payload = {k: (str(session.id) if v == "SESSION" else v) for k, v in payload.items()}
    with caplog.at_level(logging.ERROR, logger="voice.tasks"):
        result = task.apply(kwargs={"payload": payload})
    assert result.successful()  # not retried: a retry cannot fix a malformed payload
    assert field in caplog.text
    session.refresh_from_db()
    assert session.status == "created"
    assert not TranscriptSegment.objects.exists()


def test_a_malformed_event_in_a_batch_drops_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    """A batch carries every session of a worker process: one bad line must not lose the others'."""
    first, second = VoiceSessionFactory.create(), VoiceSessionFactory.create()
    good = [
        _segment(first, 0, "first caller").model_dump(mode="json"),
        _segment(second, 0, "second caller").model_dump(mode="json"),
    ]
    bad = {**good[0], "event_id": "bad-1", "role": "robot"}
    payload = {"segments": [good[0], bad, good[1], "not an object"], "usage": [{"session_id": "not-a-uuid"}]}
    with caplog.at_level(logging.ERROR, logger="voice.tasks"):
        assert tasks.event_batch.apply(kwargs={"payload": payload}).successful()
    assert sorted(TranscriptSegment.objects.values_list("text", flat=True)) == ["first caller", "second caller"]
    assert "role" in caplog.text
    junk: Any
    for junk in (None, [], "batch", {"segments": "none"}):
        assert tasks.event_batch.apply(kwargs={"payload": junk}).successful()
    assert TranscriptSegment.objects.count() == 2


def test_events_for_unknown_sessions_change_nothing() -> None:
    ghost = "00000000-0000-0000-0000-000000000000"
    _send(tasks.session_started, contracts.SessionStarted(session_id=ghost))
    _send(
        tasks.transcript_segment,
        contracts.TranscriptSegment(session_id=ghost, role="user", text="hi", start_offset_ms=0, end_offset_ms=1),
    )
    _send(tasks.session_ended, contracts.SessionEnded(session_id=ghost, reason="completed", duration_seconds=1))
    assert not TranscriptSegment.objects.exists()
    assert not ProcessedEvent.objects.exists()


def test_transcripts_of_a_deleted_session_are_not_stored_again(api: Any, livekit_server: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    livekit_server.rooms.add(session.room_name)
    assert api.delete(f"/v1/voice/sessions/{session.id}").status_code == 204
    _send(tasks.transcript_segment, _segment(session, 0, "a late line"))
    assert not TranscriptSegment.objects.filter(session=session).exists()


# ------------------------------------------------------------------ one path for the socket and the worker


def test_a_write_applied_in_process_and_also_queued_lands_once(api: Any) -> None:
    """The legacy socket applies its writes through the services in-process and queues for Celery
    what it could not confirm: when both land, the transcript line, the usage and the end each
    count once."""
    session = VoiceSessionFactory.create(organization=api.org, transport=contracts.Transport.WEBSOCKET)
    started = contracts.SessionStarted(session_id=str(session.id), providers="offline", occurred_at=T0)
    line = _segment(session, 0, "I need an appointment tomorrow")
    usage = usage_event(session, *KIMI_TURN)
    ended = _ended(session, contracts.EndReason.COMPLETED)

    lifecycle.voice_session_started_apply(event=started)
    lifecycle.transcript_segment_add(segment=line)
    lifecycle.usage_add(usage=usage)
    lifecycle.voice_session_ended_apply(event=ended)
    for event in (started, line, usage, ended):
        lifecycle.worker_event_queue(event=event)  # eager here: the task runs now

    detail = api.get(f"/v1/voice/sessions/{session.id}").json()
    assert (detail["status"], detail["end_reason"], detail["providers"]) == ("ended", "completed", "offline")
    assert detail["usage"]["total_cost"] == "0.048718"  # one turn, not two
    assert [t["text"] for t in api.get(f"/v1/voice/sessions/{session.id}/transcripts").json()["segments"]] == [
        "I need an appointment tomorrow"
    ]
    assert UsageRecord.objects.filter(session_id=session.id).count() == len(KIMI_TURN)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE).count() == 1


def test_a_queued_write_the_socket_could_not_apply_is_applied_by_its_task(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org, transport=contracts.Transport.WEBSOCKET)
    lifecycle.worker_event_queue(event=_segment(session, 0, "hello", role="agent"))
    lifecycle.worker_event_queue(event=_ended(session, contracts.EndReason.USER_LEFT))

    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("ended", "user_left")
    assert list(TranscriptSegment.objects.filter(session=session).values_list("role", "text")) == [("agent", "hello")]
