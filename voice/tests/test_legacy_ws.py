"""The legacy PCM WebSocket end to end: a real Daphne server on loopback, a real WebSocket client,
the real Sarvam and chat clients against the loopback provider fakes, and the session row read
back through PostgreSQL and the REST API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.utils import timezone
from websockets.exceptions import ConnectionClosed

from accounts import services as account_services
from accounts.keys import hash_key
from accounts.models import ApiKey
from accounts.tests.factories import make_key, make_org
from agent_worker import contracts
from billing import selectors as billing_selectors
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam, silence, tone
from voice import lifecycle
from voice.legacy.protocol import CloseCode
from voice.models import TranscriptSegment, VoiceSession
from voice.tests.factories import VoiceSessionFactory
from voice.tests.ws_support import (
    DAPHNE_TEST_MARKS,
    ROOT,
    DaphneServer,
    WsCaller,
    config_message,
    in_thread,
    provider_env,
    serve_daphne,
)

REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = DAPHNE_TEST_MARKS

SARVAM_KEY = "sk-sarvam-ws-test"
CLARIFAI_PAT = "clarifai-pat-ws-test"
PROMPT = "You are Asha, the front desk of the Pune clinic. Answer in one short sentence."
GREETING = "Namaste! Welcome to the Pune clinic."
CAPACITY = 6  # PROVIDER_MAX_LIVE_SESSIONS of the test server
AEC_WARMUP_SECONDS = 3.0  # Conversation's default: echo of the greeting cannot interrupt it


@pytest.fixture(scope="module")
def sarvam() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=200) as fake:
        yield fake


@pytest.fixture(scope="module")
def chat() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key=CLARIFAI_PAT) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    django_db_setup: None, django_db_blocker: Any, sarvam: FakeSarvam, chat: FakeChatServer, tmp_path_factory: Any
) -> Iterator[DaphneServer]:
    with serve_daphne(
        django_db_blocker,
        tmp_path_factory,
        "daphne",
        **provider_env(sarvam, chat, clarifai_pat=CLARIFAI_PAT),
        PROVIDER_MAX_LIVE_SESSIONS=str(CAPACITY),
        LEGACY_WS_CONFIG_TIMEOUT_SECONDS="2",
        AGENT_GOODBYE_LEAD_SECONDS="3",
    ) as daphne:
        yield daphne


@pytest.fixture(autouse=True)
def fresh_fakes(sarvam: FakeSarvam, chat: FakeChatServer) -> Iterator[None]:
    """The fakes outlive one test (the server's URLs point at them); their scripts, faults and
    counts (which tests compare with what the session billed) must not."""
    sarvam.reset()
    chat.reset()
    yield


@pytest.fixture
def key(db: None) -> str:
    return make_key(make_org(name="Pune Clinic")).plaintext


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def open_session(server: DaphneServer, key: str, **config: Any) -> tuple[WsCaller, str]:
    caller = await WsCaller.open(server.ws_url(key), sample_rate=config.pop("sample_rate", 16000))
    started = await caller.configure(system_prompt=PROMPT, **config)
    caller.start_streaming()
    return caller, started["session_id"]


async def wait_for_greeting(caller: WsCaller) -> None:
    await caller.wait_for(lambda: caller.transcripts("agent") != [] and caller.of("agent.stopped") != [])


async def stop_after_greeting(server: DaphneServer, key: str, stop: Callable[[str], Any]) -> tuple[WsCaller, str, Any]:
    """Open a call, run ``stop(session_id)`` (Django code, from outside the server) once the greeting
    has played, and wait for the call to end; returns the caller, its session id and what ``stop`` returned."""
    caller, session_id = await open_session(server, key)
    await wait_for_greeting(caller)
    result = await in_thread(lambda: stop(session_id))
    await caller.wait_for(lambda: caller.first("session.ended") is not None)
    await caller.wait_closed()
    await caller.aclose()
    return caller, session_id, result


async def end(caller: WsCaller) -> dict[str, Any]:
    await caller.send_json({"type": "end"})
    closed = await caller.wait_closed()
    ended = caller.first("session.ended")
    assert ended is not None
    ended["close_code"] = closed.code
    await caller.aclose()
    return ended


def session_row(session_id: str) -> VoiceSession:
    return VoiceSession.objects.get(pk=session_id)


def transcript_rows(session_id: str) -> list[tuple[str, str]]:
    return [(s.role, s.text) for s in TranscriptSegment.objects.filter(session__pk=session_id)]


# ------------------------------------------------------------------------------ conversations


def test_a_spoken_exchange_on_the_provider_fakes(server, sarvam, chat, key) -> None:
    chat.script_replies(GREETING, "We open at nine in the morning.")
    sarvam.script_transcripts("when do you open tomorrow")

    async def scenario() -> tuple[WsCaller, str, dict[str, Any]]:
        caller, session_id = await open_session(server, key, voice="kavya", language="en-IN")
        await wait_for_greeting(caller)
        greeting_audio = caller.audio_seconds()
        assert greeting_audio > 0.5
        await caller.say(0.8)
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 2 and len(caller.of("agent.stopped")) >= 2)
        return caller, session_id, await end(caller)

    caller, session_id, ended = run(scenario())

    assert caller.transcripts("agent") == [GREETING, "We open at nine in the morning."]
    assert caller.transcripts("user") == ["when do you open tomorrow"]
    kinds = [e["type"] for e in caller.events]
    assert kinds[0] == "session.started" and kinds[-1] == "session.ended"
    assert kinds.count("agent.speaking") == 2 and kinds.count("agent.stopped") == 2
    assert ended["reason"] == "completed" and ended["close_code"] == CloseCode.NORMAL
    # The agent's voice is the fake's tone: 20 ms per character of what it said.
    spoken = sum(len(t) for t in caller.transcripts("agent"))
    assert caller.audio_seconds() == pytest.approx(spoken * sarvam.tts_ms_per_char / 1000, rel=0.1)
    totals = {(u["component"], u["model"]): u["quantity"] for u in caller.of("usage")[-1]["totals"]}
    assert totals[("tts_characters", "bulbul:v3")] == sarvam.tts_characters
    assert totals[("llm_output_tokens", "kimi-k2.5")] == sum(c for _, c in chat.usage_served)
    assert totals[("stt_seconds", "saaras:v3")] == pytest.approx(sarvam.stt_audio_seconds, abs=0.05)
    assert sarvam.tts_configs[-1]["speaker"] == "kavya"
    assert chat.requests[-1].messages[0] == {"role": "system", "content": PROMPT}
    assert sarvam.violations == []

    row = session_row(session_id)
    assert row.transport == contracts.Transport.WEBSOCKET
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "completed")
    assert row.providers == "sarvam+clarifai"
    assert row.started_at is not None and row.duration_seconds and row.duration_seconds > 1
    assert len(row.turn_latencies) == 1
    assert transcript_rows(session_id) == [
        ("agent", GREETING),
        ("user", "when do you open tomorrow"),
        ("agent", "We open at nine in the morning."),
    ]


def test_barge_in_stops_the_agents_audio(server, sarvam, chat, key) -> None:
    long_reply = " ".join(f"Item {n} on our list of services is explained in this sentence." for n in range(12))
    chat.script_replies("Hello!", long_reply, "Of course, go ahead.")
    chat.inter_token_delay_s = 0.02
    sarvam.script_transcripts("tell me all your services", "wait stop")

    async def scenario() -> WsCaller:
        caller, _ = await open_session(server, key)
        await wait_for_greeting(caller)
        await caller.say(0.6)
        await caller.wait_for(lambda: len(caller.of("agent.speaking")) >= 2)
        # Interruptions are off for the first AEC_WARMUP_SECONDS after the agent first spoke.
        barge_in_at = max(time.monotonic() + 0.6, caller.time_of("agent.speaking") + AEC_WARMUP_SECONDS + 0.3)
        await asyncio.sleep(barge_in_at - time.monotonic())
        barge_in = asyncio.create_task(caller.say(0.5))
        await caller.wait_for(lambda: caller.first("interrupted") is not None)
        await barge_in
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 3)
        await end(caller)
        return caller

    caller = run(scenario())

    kinds = [e["type"] for e in caller.events]
    assert kinds.count("interrupted") == 1
    assert kinds.index("interrupted") < len(kinds) - 1 - kinds[::-1].index("agent.stopped")
    # Counted in the order the socket delivered audio and events, not by arrival times: the caller
    # heard part of the long reply before the server decided, and after it only what was already
    # in flight (the send-ahead and one frame) plus the whole short reply to the second utterance.
    reply_started, interrupted = caller.index_of("agent.speaking", nth=1), caller.index_of("interrupted")

    def seconds_of(text: str) -> float:
        return len(text) * sarvam.tts_ms_per_char / 1000

    assert 0 < caller.audio_seconds_between(reply_started, interrupted) < seconds_of(long_reply) / 3
    assert caller.audio_seconds_between(interrupted) <= seconds_of("Of course, go ahead.") + 0.25
    # The interrupted reply's line holds what was generated when the interruption was decided:
    # with backchannels on, once the words were transcribed (the agent's audio paused before).
    interrupted_text = caller.transcripts("agent")[1]
    assert long_reply.startswith(interrupted_text)
    assert caller.transcripts("user") == ["tell me all your services", "wait stop"]
    assert caller.transcripts("agent")[2] == "Of course, go ahead."


@pytest.mark.parametrize("rate", [8000, 24000])
def test_other_sample_rates_hear_and_speak_at_the_sockets_rate(server, sarvam, chat, key, rate: int) -> None:
    chat.script_replies(GREETING, "Yes.")
    sarvam.script_transcripts("are you open")

    async def scenario() -> WsCaller:
        caller, _ = await open_session(server, key, sample_rate=rate)
        assert caller.first("session.started")["sample_rate"] == rate  # type: ignore[index]
        await wait_for_greeting(caller)
        await caller.say(0.6)
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 2)
        await end(caller)
        return caller

    caller = run(scenario())
    assert caller.transcripts("user") == ["are you open"]
    # audio_seconds() counts bytes at the socket's rate: right only if the server sent that rate.
    spoken = len(GREETING) + len("Yes.")
    assert caller.audio_seconds() == pytest.approx(spoken * sarvam.tts_ms_per_char / 1000, rel=0.1)
    assert all(len(pcm) % 2 == 0 for _, pcm in caller.audio)


@pytest.mark.slow
def test_max_duration_ends_the_session_with_a_goodbye(server, chat, key) -> None:
    chat.script_replies(GREETING, "Goodbye, and thank you for calling.")

    async def scenario() -> WsCaller:
        caller, _ = await open_session(server, key, max_duration_seconds=30)
        await caller.wait_closed(timeout=45)
        await caller.aclose()
        return caller

    caller = run(scenario())
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "max_duration"
    assert caller.closed is not None and caller.closed.code == CloseCode.NORMAL
    # The goodbye is spoken, then the session ends: order, not a wall-clock window.
    assert caller.transcripts("agent")[-1] == "Goodbye, and thank you for calling."
    goodbye = max(i for i, e in enumerate(caller.events) if e["type"] == "transcript" and e["role"] == "agent")
    assert goodbye < caller.index_of("session.ended")
    row = session_row(ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "max_duration")
    assert row.duration_seconds == pytest.approx(30, abs=0.5)


# ------------------------------------------------------------------------------ authentication


def expire(plaintext: str) -> None:
    key = ApiKey.objects.get(hashed_secret=hash_key(plaintext))
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(minutes=1))


def revoke(plaintext: str) -> None:
    account_services.api_key_revoke(api_key=ApiKey.objects.get(hashed_secret=hash_key(plaintext)))


@pytest.mark.parametrize(
    ("spoil", "close", "code"),
    [
        ("missing", CloseCode.KEY_MISSING, "unauthenticated"),
        ("wrong", CloseCode.KEY_INVALID, "invalid_api_key"),
        ("revoked", CloseCode.KEY_REVOKED, "revoked_api_key"),
        ("expired", CloseCode.KEY_REVOKED, "expired_api_key"),
    ],
)
def test_a_bad_key_is_closed_with_its_code_before_any_audio(server, key, spoil, close, code) -> None:
    url = {
        "missing": server.ws_url(None),
        "wrong": server.ws_url("cm_" + "x" * 43),
        "revoked": server.ws_url(key),
        "expired": server.ws_url(key),
    }[spoil]
    if spoil == "revoked":
        revoke(key)
    elif spoil == "expired":
        expire(key)

    async def scenario() -> WsCaller:
        caller = await WsCaller.open(url)
        with contextlib.suppress(ConnectionClosed):
            await caller.ws.send(tone(0.1, 16000))  # never heard: the socket is already closing
        await caller.wait_closed()
        return caller

    caller = run(scenario())
    assert caller.closed is not None and caller.closed.code == close
    assert [e["type"] for e in caller.events] == ["error"]
    assert caller.events[0]["code"] == code and caller.events[0]["fatal"] is True
    assert VoiceSession.objects.count() == 0


def test_a_good_key_is_marked_used(server, key) -> None:
    async def scenario() -> None:
        caller, _ = await open_session(server, key)
        await end(caller)

    run(scenario())
    assert ApiKey.objects.get(hashed_secret=hash_key(key)).last_used_at is not None


# ------------------------------------------------------------------------------ bad input before the session


async def first_message_then_close(server: DaphneServer, key: str, message: str | bytes) -> WsCaller:
    caller = await WsCaller.open(server.ws_url(key))
    await caller.ws.send(message)
    await caller.wait_closed()
    return caller


@pytest.mark.parametrize(
    "message",
    [tone(0.1, 16000), "not json", '["config"]', '{"type": "hello"}', '{"voice": "shubh"}'],
    ids=["audio-before-config", "junk-text", "json-array", "unknown-type", "missing-type"],
)
def test_anything_but_a_config_first_is_a_protocol_error(server, key, message) -> None:
    caller = run(first_message_then_close(server, key, message))
    assert caller.closed is not None and caller.closed.code == CloseCode.PROTOCOL_ERROR
    assert caller.events == [caller.events[0]] and caller.events[0]["code"] == "protocol_error"
    assert VoiceSession.objects.count() == 0


def test_an_invalid_config_gets_the_rest_apis_fields_and_messages(server, make_client) -> None:
    api = make_client()
    body = {"voice": "nobody", "max_duration_seconds": 5, "llm_model": "kimi-k2.5-fast", "colour": "blue"}
    rest = api.post("/v1/voice/sessions", body, format="json").json()["error"]

    caller = run(first_message_then_close(server, api.plaintext, config_message(**body)))

    assert caller.closed is not None and caller.closed.code == CloseCode.INVALID_CONFIG
    error = caller.events[0]
    assert error["code"] == rest["code"] == "validation_error"
    assert error["fields"] == rest["fields"]
    assert set(error["fields"]) == {"voice", "max_duration_seconds", "llm_model", "colour"}
    assert VoiceSession.objects.count() == 0


@pytest.mark.parametrize("rate", [44100, 0, "16000", True, None])
def test_an_unsupported_sample_rate_is_an_invalid_config(server, key, rate) -> None:
    caller = run(first_message_then_close(server, key, json.dumps({"type": "config", "sample_rate": rate})))
    assert caller.closed is not None and caller.closed.code == CloseCode.INVALID_CONFIG
    assert list(caller.events[0]["fields"]) == ["sample_rate"]
    assert "8000, 16000, 24000" in caller.events[0]["fields"]["sample_rate"][0]


def test_no_config_in_time_closes_the_socket(server, key) -> None:
    async def scenario() -> WsCaller:
        caller = await WsCaller.open(server.ws_url(key))
        await caller.wait_closed(timeout=10)
        return caller

    started = time.monotonic()
    caller = run(scenario())
    assert caller.closed is not None and caller.closed.code == CloseCode.CONFIG_TIMEOUT
    assert caller.events[0]["code"] == "config_timeout"
    # Not before the configured 2 s (a bound a slow machine cannot miss); wait_closed bounds the rest.
    assert time.monotonic() - started >= 2


def test_full_provider_capacity_is_refused_at_config(server, key) -> None:
    org = ApiKey.objects.get(hashed_secret=hash_key(key)).organization
    VoiceSessionFactory.create_batch(CAPACITY, organization=org, status=VoiceSession.Status.ACTIVE)

    caller = run(first_message_then_close(server, key, config_message()))

    assert caller.closed is not None and caller.closed.code == CloseCode.CAPACITY_EXHAUSTED
    assert caller.events[0]["code"] == "capacity_exhausted"
    assert VoiceSession.objects.count() == CAPACITY


def test_billing_refuses_at_config_with_the_rest_apis_codes(server, key) -> None:
    org = ApiKey.objects.get(hashed_secret=hash_key(key)).organization
    account = billing_selectors.billing_account_get(organization=org)
    account.max_concurrent_sessions = 1
    account.save(update_fields=["max_concurrent_sessions"])
    VoiceSessionFactory.create(organization=org, status=VoiceSession.Status.ACTIVE)

    busy = run(first_message_then_close(server, key, config_message()))
    assert busy.closed is not None and busy.closed.code == CloseCode.CONCURRENCY_LIMIT
    assert busy.events[0]["code"] == "concurrency_limit" and busy.events[0]["retry_after"] > 0

    account.payment_failed = True
    account.save(update_fields=["payment_failed"])
    broke = run(first_message_then_close(server, key, config_message()))
    assert broke.closed is not None and broke.closed.code == CloseCode.PAYMENT_REQUIRED
    assert broke.events[0]["code"] == "payment_required"
    assert VoiceSession.objects.count() == 1


@pytest.mark.skipif(not REDIS_URL, reason="billing reaches the server process through the Redis channel layer")
def test_billing_stops_a_live_call_for_insufficient_funds(server, chat, key) -> None:
    chat.script_replies(GREETING)

    reason = contracts.EndReason.INSUFFICIENT_FUNDS
    caller, session_id, _ = run(
        stop_after_greeting(
            server, key, lambda session_id: lifecycle.voice_session_terminate(session_id=session_id, reason=reason)
        )
    )
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "insufficient_funds"
    assert caller.closed is not None and caller.closed.code == CloseCode.PAYMENT_REQUIRED
    # As every 4xxx close, it says why first.
    assert [(e["code"], e["fatal"]) for e in caller.of("error")] == [("payment_required", True)]
    row = session_row(session_id)
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "insufficient_funds")
    assert transcript_rows(session_id) == [("agent", GREETING)]


# ------------------------------------------------------------------------------ bad input during the session


async def fail_during_session(server: DaphneServer, key: str, bad: list[bytes]) -> tuple[WsCaller, str]:
    """Wait for the greeting (so there is a transcript to keep), then send ``bad`` at once."""
    caller, session_id = await open_session(server, key)
    await wait_for_greeting(caller)
    caller.stop_streaming()
    with contextlib.suppress(ConnectionClosed):  # the server may close before the last frame
        for frame in bad:
            await caller.ws.send(frame)
    await caller.wait_closed()
    await caller.aclose()
    return caller, session_id


@pytest.mark.parametrize(
    ("bad", "close", "code"),
    [
        ([b"\x01" * 321], CloseCode.INVALID_AUDIO, "invalid_audio"),
        ([b"\x00" * (32000 + 2)], CloseCode.FRAME_TOO_LARGE, "frame_too_large"),
        ([silence(0.1, 16000)] * 60, CloseCode.AUDIO_TOO_FAST, "audio_too_fast"),
    ],
    ids=["odd-length", "oversize", "faster-than-real-time"],
)
def test_bad_audio_ends_the_session_as_failed_and_keeps_the_transcript(server, chat, key, bad, close, code) -> None:
    chat.script_replies(GREETING)
    caller, session_id = run(fail_during_session(server, key, bad))

    assert caller.closed is not None and caller.closed.code == close
    errors = caller.of("error")
    assert [(e["code"], e["fatal"]) for e in errors] == [(code, True)]
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "error" and ended["error"] == errors[0]["message"]
    row = session_row(session_id)
    assert (row.status, row.end_reason) == (VoiceSession.Status.FAILED, "error")
    assert row.error_message == errors[0]["message"]
    assert transcript_rows(session_id) == [("agent", GREETING)]


def test_junk_text_during_the_session_is_answered_and_the_call_goes_on(server, chat, sarvam, key) -> None:
    chat.script_replies(GREETING, "Sure.")
    sarvam.script_transcripts("hello")

    async def scenario() -> tuple[WsCaller, dict[str, Any]]:
        caller, _ = await open_session(server, key)
        for junk in ("not json", '{"type": "dance"}', "[]", config_message()):
            await caller.ws.send(junk)
        await wait_for_greeting(caller)
        await caller.say(0.6)
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 2)
        return caller, await end(caller)

    caller, ended = run(scenario())
    errors = caller.of("error")
    assert [(e["code"], e["fatal"]) for e in errors] == [("protocol_error", False)] * 4
    assert "already configured" in errors[3]["message"]
    assert ended["reason"] == "completed" and ended["close_code"] == CloseCode.NORMAL
    assert caller.transcripts("user") == ["hello"]


def test_a_client_slower_than_real_time_is_heard_as_silence(server, chat, sarvam, key) -> None:
    chat.script_replies(GREETING, "I heard you.")
    sarvam.script_transcripts("is anyone there")

    async def scenario() -> tuple[WsCaller, dict[str, Any]]:
        caller, _ = await open_session(server, key)
        await wait_for_greeting(caller)
        await caller.say(0.6)
        caller.stop_streaming()  # the client stalls mid-call: no end-of-speech silence ever comes
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 2)
        return caller, await end(caller)

    caller, ended = run(scenario())
    underruns = [e for e in caller.of("error") if e["code"] == "audio_underrun"]
    assert len(underruns) == 1 and underruns[0]["fatal"] is False
    assert caller.transcripts("user") == ["is anyone there"]
    assert ended["reason"] == "completed"


def test_audio_held_up_then_delivered_in_a_burst_is_not_too_fast(server, chat, sarvam, key) -> None:
    # A congested network (or this server falling behind) delivers real-time audio late and in a
    # burst; the silence filled in meanwhile is ours, so the burst must not count as too fast.
    chat.script_replies(GREETING, "Still here.")
    sarvam.script_transcripts("hello again")

    async def scenario() -> tuple[WsCaller, dict[str, Any]]:
        caller, _ = await open_session(server, key)
        await wait_for_greeting(caller)
        caller.stop_streaming()
        await asyncio.sleep(2.5)
        for _ in range(125):  # the 2.5 s the network held back, arriving at once
            await caller.ws.send(silence(0.02, 16000))
        caller.start_streaming()
        await caller.say(0.6)
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 2)
        return caller, await end(caller)

    caller, ended = run(scenario())
    assert [e["code"] for e in caller.of("error") if e["fatal"]] == []
    assert caller.transcripts("user") == ["hello again"]
    assert ended["reason"] == "completed"


def test_a_client_vanishing_mid_utterance_ends_the_session_and_keeps_its_words(server, chat, sarvam, key) -> None:
    chat.script_replies(GREETING)
    sarvam.script_transcripts("i was just saying")

    async def scenario() -> str:
        caller, session_id = await open_session(server, key)
        await wait_for_greeting(caller)
        caller.stop_streaming()
        for _ in range(20):  # 0.4 s of speech in real time, then the network drops
            await caller.ws.send(tone(0.02, 16000))
            await asyncio.sleep(0.02)
        caller.ws.transport.abort()
        await caller.aclose()
        return session_id

    session_id = run(scenario())
    row = wait_for_row(session_id, lambda r: not r.is_live)
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "user_left")
    # The words said before the drop are kept (the STT is drained, not cut off).
    assert transcript_rows(session_id)[:2] == [("agent", GREETING), ("user", "i was just saying")]


def wait_for_row(session_id: str, predicate: Any, timeout: float = 20) -> VoiceSession:
    deadline = time.monotonic() + timeout
    while True:
        row = session_row(session_id)
        if predicate(row):
            return row
        assert time.monotonic() < deadline, f"session {session_id} still {row.status}"
        time.sleep(0.1)


# ------------------------------------------------------------------------------ REST and control


@pytest.mark.skipif(not REDIS_URL, reason="REST DELETE reaches the server process through the Redis channel layer")
def test_rest_delete_ends_the_live_socket(server, chat, make_client) -> None:
    chat.script_replies(GREETING)
    api = make_client()

    caller, _, response = run(
        stop_after_greeting(server, api.plaintext, lambda session_id: api.delete(f"/v1/voice/sessions/{session_id}"))
    )
    assert response.status_code == 204
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "deleted"
    assert caller.closed is not None and caller.closed.code == CloseCode.NORMAL
    row = session_row(ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "deleted")
    assert row.content_deleted_at is not None and transcript_rows(ended["session_id"]) == []


def test_a_delete_whose_control_message_is_lost_still_ends_the_socket_call(
    server, chat, make_client, monkeypatch
) -> None:
    chat.script_replies(GREETING)
    api = make_client()
    lost: list[tuple[str, dict[str, Any]]] = []

    async def dropped(group: str, message: dict[str, Any]) -> None:
        lost.append((group, message))

    # The control message leaves this process and never arrives: only the socket's own check is left.
    monkeypatch.setattr(get_channel_layer(), "group_send", dropped)

    caller, _, response = run(
        stop_after_greeting(server, api.plaintext, lambda session_id: api.delete(f"/v1/voice/sessions/{session_id}"))
    )
    assert response.status_code == 204
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "deleted"
    assert [message["reason"] for _, message in lost] == ["deleted"]
    assert caller.closed is not None and caller.closed.code == CloseCode.NORMAL
    row = session_row(ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "deleted")


def test_revoking_the_key_ends_its_open_socket_call(server, chat, make_client) -> None:
    chat.script_replies(GREETING)
    api = make_client()

    caller, _, _ = run(
        stop_after_greeting(server, api.plaintext, lambda session_id: account_services.api_key_revoke(api_key=api.key))
    )
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "key_revoked"
    assert caller.closed is not None and caller.closed.code == CloseCode.KEY_REVOKED
    row = session_row(ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "key_revoked")


def test_a_key_revoked_between_the_connect_and_the_config_opens_no_call(server, make_client) -> None:
    api = make_client()

    async def scenario() -> WsCaller:
        caller = await WsCaller.open(server.ws_url(api.plaintext))  # the key is checked here, still valid
        await in_thread(lambda: account_services.api_key_revoke(api_key=api.key))
        await caller.ws.send(config_message(system_prompt=PROMPT))
        await caller.wait_closed()
        return caller

    caller = run(scenario())
    assert caller.closed is not None and caller.closed.code == CloseCode.KEY_REVOKED
    assert caller.first("session.started") is None
    (error,) = caller.of("error")
    assert (error["code"], error["fatal"]) == ("revoked_api_key", True)
    assert not VoiceSession.objects.filter(organization=api.org).exists()


def test_a_call_whose_key_is_revoked_without_its_signal_still_ends(server, chat, make_client) -> None:
    chat.script_replies(GREETING)
    api = make_client()

    def revoke_quietly(session_id: str) -> None:
        # As if the revocation's signal raced the call's start: only the key row says so.
        ApiKey.objects.filter(pk=api.key.pk).update(revoked_at=timezone.now())

    caller, _, _ = run(stop_after_greeting(server, api.plaintext, revoke_quietly))
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "key_revoked"
    assert caller.closed is not None and caller.closed.code == CloseCode.KEY_REVOKED
    row = session_row(ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "key_revoked")


@pytest.mark.parametrize("fault", ["refuse", "hang"])
def test_a_call_whose_control_group_cannot_be_joined_is_refused_loudly(server, key, tmp_path, fault) -> None:
    app = "voice.tests.asgi_control_group_down:application"
    env = {**server.env, "CONTROL_GROUP_FAULT": fault}
    with DaphneServer(env=env, log_path=tmp_path / "daphne.log", application=app) as broken:
        caller = run(first_message_then_close(broken, key, config_message(system_prompt=PROMPT)))

    assert caller.closed is not None and caller.closed.code == CloseCode.SERVICE_UNAVAILABLE == 4503
    assert caller.first("session.started") is None
    error, ended = caller.events
    assert (error["type"], error["code"], error["fatal"]) == ("error", "service_unavailable", True)
    assert error["retry_after"] > 0
    assert (ended["type"], ended["reason"]) == ("session.ended", "error")
    row = session_row(ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.FAILED, "error")
    assert not VoiceSession.objects.live().exists()  # its slot is free


def test_the_session_is_read_through_rest_by_its_owner_only(server, chat, sarvam, make_client) -> None:
    chat.script_replies(GREETING, "Yes, we are.")
    sarvam.script_transcripts("are you open today")
    owner, stranger = make_client("Pune Clinic"), make_client("Mumbai Clinic")

    async def scenario() -> str:
        caller, session_id = await open_session(server, owner.plaintext, metadata={"ticket": "T-1"})
        await wait_for_greeting(caller)
        await caller.say(0.6)
        await caller.wait_for(lambda: len(caller.transcripts("agent")) >= 2)
        await end(caller)
        return session_id

    session_id = run(scenario())
    detail = owner.get(f"/v1/voice/sessions/{session_id}")
    assert detail.status_code == 200
    body = detail.json()
    assert (body["transport"], body["status"], body["end_reason"]) == ("websocket", "ended", "completed")
    assert body["metadata"] == {"ticket": "T-1"}
    # Usage reached billing through the same task body as the worker's events: every component priced.
    usage = {(item["component"], item["model"]): float(item["quantity"]) for item in body["usage"]["items"]}
    assert set(usage) == {
        ("llm_input_tokens", "kimi-k2.5"),
        ("llm_output_tokens", "kimi-k2.5"),
        ("stt_seconds", "saaras:v3"),
        ("tts_characters", "bulbul:v3"),
    }
    assert usage[("tts_characters", "bulbul:v3")] == sarvam.tts_characters
    assert usage[("llm_output_tokens", "kimi-k2.5")] == sum(c for _, c in chat.usage_served)
    assert float(body["usage"]["total_cost"]) > 0
    lines = owner.get(f"/v1/voice/sessions/{session_id}/transcripts").json()["segments"]
    assert [(line["role"], line["text"]) for line in lines] == [
        ("agent", GREETING),
        ("user", "are you open today"),
        ("agent", "Yes, we are."),
    ]
    assert [s["id"] for s in owner.get("/v1/voice/sessions").json()["results"]] == [session_id]

    assert stranger.get(f"/v1/voice/sessions/{session_id}").status_code == 404
    assert stranger.get(f"/v1/voice/sessions/{session_id}/transcripts").status_code == 404
    assert stranger.delete(f"/v1/voice/sessions/{session_id}").status_code == 404
    assert stranger.get("/v1/voice/sessions").json()["results"] == []


# ------------------------------------------------------------------------------ the command-line client

CLIENT = [sys.executable, "-m", "clients.voice_ws_client"]
TAIL_AND_VOICE = ["--tail", "1", "--voice", "kavya"]


def test_the_cli_client_streams_a_wav_and_saves_the_agents_voice(server, sarvam, chat, key, tmp_path) -> None:
    chat.script_replies(GREETING, "We open at nine.")
    sarvam.script_transcripts("when do you open")
    question = tmp_path / "question.wav"
    with wave.open(str(question), "wb") as wav:  # 44.1 kHz stereo: the client converts it
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        mono = tone(0.8, 44100)
        wav.writeframes(b"".join(mono[i : i + 2] * 2 for i in range(0, len(mono), 2)))
    answer = tmp_path / "agent.wav"

    result = subprocess.run(
        [*CLIENT, "--key", key, "--url", server.url(), "--wav", str(question), "--out", str(answer), *TAIL_AND_VOICE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("session ") and "16000 Hz, sarvam+clarifai" in lines[0]
    assert lines[1:4] == [f"[agent] {GREETING}", "[you] when do you open", "[agent] We open at nine."]
    assert lines[-1].startswith("session ended: completed after ")
    with wave.open(str(answer), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        seconds = wav.getnframes() / 16000
    assert seconds == pytest.approx((len(GREETING) + len("We open at nine.")) * sarvam.tts_ms_per_char / 1000, rel=0.1)
    assert sarvam.tts_configs[-1]["speaker"] == "kavya"


def test_the_cli_client_exits_1_on_a_refused_session(server, tmp_path) -> None:
    question = tmp_path / "q.wav"
    with wave.open(str(question), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(silence(0.1, 16000))
    result = subprocess.run(
        [*CLIENT, "--key", "cm_" + "x" * 43, "--url", server.url(), "--wav", str(question)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "error: invalid_api_key: Invalid API key." in result.stderr
