"""The worker → Django path for real: events sent by ``agent_worker.reporting`` into Redis, run by
a real ``celery worker`` process, applied to PostgreSQL, read back through the REST API.

Duplicates, reordering and late events are sent on purpose; each test ends with a sentinel event
behind them in the same FIFO queue (solo pool), so once the sentinel is applied every event before
it has been processed too and exact counts can be asserted."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.utils import timezone
from livekit.protocol.room import DeleteRoomRequest

from agent_worker import contracts
from agent_worker.reporting import EventReporter
from billing.tests.support import KIMI_TURN, usage_event
from testsupport.fakes.livekit_server import FakeLiveKitServer
from voice.models import ProcessedEvent, TranscriptSegment, VoiceSession
from voice.tests.celery_support import CeleryWorker, drain_behind, segment, send, wait_until
from voice.tests.factories import VoiceSessionFactory
from voice.tests.ws_support import child_database_url

REDIS_URL = os.environ.get("REDIS_URL", "")
DATABASE_URL = os.environ.get("DATABASE_URL", "")

pytestmark = [
    pytest.mark.live_services,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (REDIS_URL and DATABASE_URL.startswith("postgres")), reason="needs REDIS_URL and a PostgreSQL DATABASE_URL"
    ),
]

T0 = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
APPLY_TIMEOUT_SECONDS = 90


@pytest.fixture(scope="module")
def lk_server() -> Iterator[FakeLiveKitServer]:
    server = FakeLiveKitServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def celery_worker(
    django_db_setup: None, django_db_blocker: Any, lk_server: FakeLiveKitServer, tmp_path_factory: Any
) -> Iterator[CeleryWorker]:
    """A real worker on the test database and REDIS_URL."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    worker = CeleryWorker(
        database_url=child_database_url(django_db_blocker),
        log=tmp_path_factory.mktemp("celery") / "worker.log",
        name="live-test",
        env={"LIVEKIT_API_URL": lk_server.url},
    )
    yield worker.start()
    worker.stop()
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def reporter() -> Iterator[EventReporter]:
    reporter = EventReporter(broker_url=REDIS_URL)
    yield reporter
    asyncio.run(reporter.aclose())


def wait_for(condition: Callable[[], bool], what: str) -> None:
    wait_until(condition, what, timeout=APPLY_TIMEOUT_SECONDS)


def drain(reporter: EventReporter, session_id: str) -> None:
    drain_behind(reporter, session_id, timeout=APPLY_TIMEOUT_SECONDS)


def test_a_conversation_lands_once_in_order_and_the_api_shows_it(
    celery_worker: Any, reporter: EventReporter, api: Any, seeded_prices: None, lk_server: FakeLiveKitServer
) -> None:
    created = api.post("/v1/voice/sessions", data=json.dumps({"language": "hi-IN"}), content_type="application/json")
    assert created.status_code == 201, created.content
    sid = created.json()["id"]

    started = contracts.SessionStarted(session_id=sid, providers="offline", occurred_at=T0)
    greeting = segment(sid, 0, "Namaste! Main aapki kya madad kar sakti hoon?", role="agent")
    question = segment(sid, 2400, "Mausam kaisa hai?")
    answer = segment(sid, 3900, "Aaj dhoop hai.", role="agent")
    ended = contracts.SessionEnded(
        session_id=sid,
        reason=contracts.EndReason.USER_LEFT,
        duration_seconds=31.0,
        occurred_at=T0 + timedelta(seconds=31),
        turn_latencies=[contracts.TurnLatency(end_of_speech_to_first_audio_ms=820.0, llm_ttft_ms=300.0)],
    )
    row = VoiceSession.objects.get(pk=sid)
    turn1 = usage_event(row, *KIMI_TURN, at=T0 + timedelta(seconds=5))
    turn2 = usage_event(row, *KIMI_TURN, at=T0 + timedelta(seconds=20))
    # Out of order, with every event delivered twice and a stale "started" after the end.
    send(reporter, started, answer, turn2, greeting, started, question, turn1, answer, ended, greeting, question)
    send(reporter, turn2, ended, turn1)
    send(reporter, contracts.SessionStarted(session_id=sid, occurred_at=T0 + timedelta(seconds=40)))
    drain(reporter, sid)
    # The end deletes the room once (its duplicate does not); a start after the end is the token
    # used again, and its room is deleted again. The session stays unchanged.
    room_name = VoiceSession.objects.get(pk=sid).room_name
    wait_for(
        lambda: [c.request for c in lk_server.calls_to("DeleteRoom")] == [DeleteRoomRequest(room=room_name)] * 2,
        "the end's and the late start's deletions of the room",
    )

    session = VoiceSession.objects.get(pk=sid)
    assert (session.status, session.end_reason, session.started_at) == ("ended", "user_left", T0)
    assert TranscriptSegment.objects.filter(session=session).count() == 3
    assert ProcessedEvent.objects.filter(session=session).count() == 3

    body = api.get(f"/v1/voice/sessions/{sid}").json()
    assert body["status"] == "ended"
    assert body["end_reason"] == "user_left"
    assert body["providers"] == "offline"
    assert body["started_at"] == "2026-02-01T09:30:00Z"
    assert body["ended_at"] == "2026-02-01T09:30:31Z"
    assert body["duration_seconds"] == 31.0
    assert body["latency"]["turns"] == 1
    assert body["latency"]["first_audio_p50_ms"] == 820.0
    # Two turns billed once each: 2 × 0.0487184 USD.
    assert body["usage"]["total_cost"] == "0.097437"
    assert api.get("/v1/billing/limits").json()["balance"] == "4.902563"

    transcripts = api.get(f"/v1/voice/sessions/{sid}/transcripts").json()
    assert [(s["role"], s["text"]) for s in transcripts["segments"]] == [
        ("agent", greeting.text),
        ("user", question.text),
        ("agent", answer.text),
    ]


def test_an_end_that_arrives_before_the_start_is_final(celery_worker: Any, reporter: EventReporter) -> None:
    session = VoiceSessionFactory.create()
    sid = str(session.id)
    # The worker reports the start first (so it happened first); the end overtakes it in the queue.
    started = contracts.SessionStarted(session_id=sid, providers="sarvam+clarifai")
    send(
        reporter,
        contracts.SessionEnded(session_id=sid, reason=contracts.EndReason.PROVIDER_ERROR, duration_seconds=4.0),
        started,
    )
    drain(reporter, sid)
    session = VoiceSession.objects.get(pk=sid)
    assert (session.status, session.end_reason, session.duration_seconds) == ("failed", "provider_error", 4.0)
    # The facts the late start carries are kept; its status change is not.
    assert session.started_at is not None and session.ended_at is not None
    assert session.started_at <= session.ended_at
    assert session.providers == "sarvam+clarifai"


def test_malformed_events_are_dropped_and_do_not_block_the_queue(celery_worker: Any, reporter: EventReporter) -> None:
    session = VoiceSessionFactory.create()
    sid = str(session.id)
    # What an older or broken worker might send: an unknown reason.
    reporter._app.send_task(contracts.TASK_SESSION_ENDED, kwargs={"payload": {"session_id": sid, "reason": "bored"}})
    send(reporter, segment(sid, 0, "still here"))
    drain(reporter, sid)
    session = VoiceSession.objects.get(pk=sid)
    assert session.status == "created"
    assert TranscriptSegment.objects.filter(session=session).count() == 1


def test_beat_reaper_task_fails_unjoined_sessions_and_deletes_their_rooms(
    celery_worker: Any, reporter: EventReporter, lk_server: FakeLiveKitServer
) -> None:
    session = VoiceSessionFactory.create(
        join_deadline=timezone.now() - timedelta(seconds=1), room_name="cm_live_unjoined"
    )
    lk_server.rooms.add(session.room_name)
    # What beat sends every 30 s (CELERY_BEAT_SCHEDULE "voice-reap-sessions").
    reporter._app.send_task("voice.reap_sessions")
    wait_for(lambda: VoiceSession.objects.get(pk=session.pk).status == "failed", "the reaper to fail it")
    wait_for(lambda: session.room_name not in lk_server.rooms, "the room deletion")
    session = VoiceSession.objects.get(pk=session.pk)
    assert session.end_reason == "unjoined"
    deleted = [
        c.request
        for c in lk_server.calls_to("DeleteRoom")
        if isinstance(c.request, DeleteRoomRequest) and c.request.room == session.room_name
    ]
    assert deleted == [DeleteRoomRequest(room="cm_live_unjoined")]


def test_the_seed_path_end_to_end_from_create_to_transcripts(
    celery_worker: Any, reporter: EventReporter, api: Any, lk_server: FakeLiveKitServer, settings: Any
) -> None:
    """POST a session, hand the token's dispatch to the agent worker's entry point (as LiveKit
    would), hold a conversation against the Sarvam fake, then read it back from the REST API."""
    from livekit import api as lk_api
    from livekit import rtc
    from livekit.agents.testing import fake_job_context

    from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
    from agent_worker.provider_settings import ProviderSettings, SpeechMode
    from agent_worker.settings import WorkerSettings
    from agent_worker.worker import SessionIO, run_job
    from testsupport.fakes.sarvam import FakeSarvam, silence, tone

    body = {"language": "hi-IN", "voice": "shubh", "llm_model": "sarvam-105b", "max_duration_seconds": 60}
    created = api.post("/v1/voice/sessions", data=json.dumps(body), content_type="application/json")
    assert created.status_code == 201, created.content
    sid, token = created.json()["id"], created.json()["token"]
    claims = lk_api.TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(token)
    assert claims.room_config is not None and claims.video is not None
    (dispatch,) = claims.room_config.agents
    assert dispatch.agent_name == settings.LIVEKIT_AGENT_NAME
    room_name = claims.video.room
    lk_server.rooms.add(room_name)

    async def converse() -> None:
        async with FakeSarvam(api_key="sk-e2e", end_silence_ms=300, tts_ms_per_char=5) as sarvam:
            sarvam.script_transcripts("Aaj mausam kaisa hai?")
            sarvam.chat.script_replies("Namaste! Main aapki kya madad kar sakti hoon?", "Aaj dhoop hai.")
            providers = ProviderSettings(
                speech_providers=SpeechMode.REAL,
                sarvam_api_key="sk-e2e",
                sarvam_base_url=sarvam.http_url,
                sarvam_ws_url=sarvam.ws_url,
            )
            audio_in = QueueAudioInput(sample_rate=16000)

            async def drop(pcm: bytes) -> None:
                return None

            room = rtc.Room()
            with fake_job_context(room=room, job_metadata=dispatch.metadata) as ctx:
                ctx.job.room.name = room_name
                job = asyncio.create_task(
                    run_job(
                        ctx,
                        settings=WorkerSettings(),
                        providers=providers,
                        reporter=reporter,
                        session_io=SessionIO(
                            audio_input=audio_in, audio_output=CallbackAudioOutput(sample_rate=16000, on_audio=drop)
                        ),
                    )
                )
            async with asyncio.timeout(60):
                while not sarvam.tts_texts:
                    await asyncio.sleep(0.05)
                for chunk in (tone(0.6, 16000), silence(0.8, 16000)):
                    for i in range(0, len(chunk), 640):
                        audio_in.push(chunk[i : i + 640])
                        await asyncio.sleep(0.02)
                while len(sarvam.chat.requests) < 2 or len(sarvam.tts_texts) < 2:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # let the answer play out
                caller = SimpleNamespace(kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, identity=f"user-{sid}")
                room.emit("participant_disconnected", caller)
                ended = await job
            assert ended is not None and ended.reason == contracts.EndReason.USER_LEFT
            assert await reporter.flush(within=60)

    asyncio.run(converse())
    wait_for(lambda: VoiceSession.objects.get(pk=sid).status == "ended", "the session to end in Django")
    drain(reporter, sid)

    detail = api.get(f"/v1/voice/sessions/{sid}").json()
    assert detail["status"] == "ended" and detail["end_reason"] == "user_left"
    assert detail["providers"] == "sarvam+sarvam"
    assert detail["started_at"] and detail["ended_at"] and detail["duration_seconds"] > 0
    assert detail["latency"]["turns"] >= 1
    transcripts = api.get(f"/v1/voice/sessions/{sid}/transcripts").json()["segments"]
    assert [(s["role"], s["text"]) for s in transcripts] == [
        ("agent", "Namaste! Main aapki kya madad kar sakti hoon?"),
        ("user", "Aaj mausam kaisa hai?"),
        ("agent", "Aaj dhoop hai."),
    ]
    # The worker only reported the end: Django's worker deleted the room through voice.delete_room.
    wait_for(
        lambda: DeleteRoomRequest(room=room_name) in [c.request for c in lk_server.calls_to("DeleteRoom")],
        "the platform to delete the room",
    )
