"""Whole conversations through the real Sarvam and LLM clients against the loopback fakes:
audio in, audio out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agent_worker import contracts
from agent_worker.conversation import Conversation
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from agent_worker.tests.conftest import Call, RecordingObserver
from testsupport.fakes.openai_chat import FakeChatServer, split_tokens
from testsupport.fakes.sarvam import FakeSarvam

SARVAM_KEY = "sk-sarvam-test"
CLARIFAI_PAT = "clarifai-pat-test"
PROMPT = "You are Asha, the front desk of the Pune clinic. Answer in one short sentence."


@pytest.fixture(scope="module")
def sarvam_server() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=200) as fake:
        yield fake


@pytest.fixture(scope="module")
def chat_server() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key=CLARIFAI_PAT) as fake:
        yield fake


@pytest.fixture
def settings(sarvam: FakeSarvam, chat: FakeChatServer) -> ProviderSettings:
    return ProviderSettings(
        speech_providers=SpeechMode.REAL,
        sarvam_api_key=SARVAM_KEY,
        sarvam_base_url=sarvam.http_url,
        sarvam_ws_url=sarvam.ws_url,
        clarifai_pat=CLARIFAI_PAT,
        clarifai_base_url=chat.base_url("/v2/ext/openai/v1"),
    )


def config(**overrides: object) -> contracts.SessionConfig:
    return contracts.SessionConfig(system_prompt=PROMPT, **overrides)  # type: ignore[arg-type]


async def test_greets_then_answers_the_callers_words(settings, sarvam, chat, calls) -> None:
    chat.script_replies("Namaste! Welcome to the Pune clinic.", "We open at nine in the morning. Anything else?")
    sarvam.script_transcripts("when do you open tomorrow")
    observer = RecordingObserver()
    conversation = Conversation(session_id="s1", config=config(), providers=settings, observer=observer)
    assert conversation.providers_label == "sarvam+clarifai"
    call: Call = await calls(conversation, observer)

    await observer.wait_for(lambda: len(observer.final("agent")) >= 1)
    assert observer.final("agent")[0].text == "Namaste! Welcome to the Pune clinic."
    assert call.caller.played_seconds() > 0.5

    await observer.wait_for(lambda: observer.agent_states[-1:] == ["listening"])
    await call.caller.say(0.8)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2)

    user = observer.final("user")
    assert [u.text for u in user] == ["when do you open tomorrow"]
    request = chat.requests[-1]
    assert request.messages[0] == {"role": "system", "content": PROMPT}
    assert request.messages[-1]["content"] == "when do you open tomorrow"
    assert observer.final("agent")[1].text == "We open at nine in the morning. Anything else?"
    assert sarvam.violations == []


async def test_tts_gets_the_first_sentence_while_the_llm_still_streams(settings, sarvam, chat, calls) -> None:
    reply = "Sure. " + " ".join(["We are open every day from nine to five."] * 4)
    chat.script_replies("Hello!", reply)
    chat.inter_token_delay_s = 0.03
    sarvam.script_transcripts("are you open on sunday")
    observer = RecordingObserver()
    conversation = Conversation(session_id="s2", config=config(), providers=settings, observer=observer)
    call: Call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")

    texts_before = len(sarvam.tts_texts)
    await call.caller.say(0.6)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2)

    request = chat.requests[-1]
    tokens = split_tokens(reply)
    # The fake cannot have finished streaming before this moment.
    stream_end = request.received_at + chat.inter_token_delay_s * (len(tokens) - 1)
    first_text_at, first_text = sarvam.tts_texts[texts_before]
    assert first_text_at < stream_end
    assert len(first_text) < len(reply)
    # ... and the caller hears the reply before the LLM has finished writing it.
    first_heard = next(at for at, _ in call.caller.played if at > first_text_at)
    assert first_heard < stream_end
    assert observer.final("agent")[1].text == reply


async def test_barge_in_cuts_agent_audio_and_abandons_the_reply(settings, sarvam, chat, calls) -> None:
    long_reply = " ".join(f"Item {n} on our list of services is explained in this sentence." for n in range(12))
    chat.script_replies("Hello!", long_reply, "Of course, go ahead.")
    chat.inter_token_delay_s = 0.02
    sarvam.script_transcripts("tell me all your services", "wait stop")
    observer = RecordingObserver()
    conversation = Conversation(
        session_id="s3", config=config(), providers=settings, observer=observer, aec_warmup_seconds=None
    )
    call: Call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")

    await call.caller.say(0.6)
    await observer.wait_for(lambda: observer.agent_states[-1] == "speaking")
    speaking_since = call.caller.played[-1][0]
    await asyncio.sleep(0.5)
    barge_in = asyncio.create_task(call.caller.say(0.5))
    await observer.wait_for(lambda: observer.interruptions == 1)
    await observer.wait_for(lambda: observer.agent_states[-1] != "speaking")
    played_of_reply = call.caller.played_seconds(since=speaking_since)
    await barge_in
    await observer.wait_for(lambda: len(observer.final("agent")) >= 3)

    assert observer.interruptions == 1
    interrupted = observer.final("agent")[1]
    # What the caller heard is what the transcript keeps: a beginning of the reply, not all of it.
    assert interrupted.text and long_reply.startswith(interrupted.text[:30])
    assert len(interrupted.text) < len(long_reply)
    full_audio_seconds = len(long_reply) * sarvam.tts_ms_per_char / 1000
    assert played_of_reply < full_audio_seconds / 3
    # The interrupted LLM stream was abandoned: it never reached its usage chunk.
    assert len(chat.usage_served) == len(chat.requests) - 1
    assert [u.text for u in observer.final("user")] == ["tell me all your services", "wait stop"]
    assert observer.final("agent")[2].text == "Of course, go ahead."


async def test_usage_totals_match_what_the_fakes_served(settings, sarvam, chat, calls) -> None:
    chat.script_replies("Hello there!", "It is sunny in Pune today.")
    sarvam.script_transcripts("how is the weather")
    observer = RecordingObserver()
    conversation = Conversation(session_id="s4", config=config(), providers=settings, observer=observer)
    call: Call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")
    await call.caller.say(0.6)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2 and observer.agent_states[-1] == "listening")
    await conversation.end(contracts.EndReason.COMPLETED)
    ended = await conversation.wait_ended()

    Usage = contracts.UsageComponent
    assert observer.usage_total(Usage.LLM_INPUT_TOKENS) == {
        ("kimi-k2.5", "clarifai"): sum(p for p, _ in chat.usage_served)
    }
    assert observer.usage_total(Usage.LLM_OUTPUT_TOKENS) == {
        ("kimi-k2.5", "clarifai"): sum(c for _, c in chat.usage_served)
    }
    assert observer.usage_total(Usage.TTS_CHARACTERS) == {("bulbul:v3", "sarvam"): sarvam.tts_characters}
    stt = observer.usage_total(Usage.STT_SECONDS)
    assert list(stt) == [("saaras:v3", "sarvam")]
    assert stt[("saaras:v3", "sarvam")] == pytest.approx(sarvam.stt_audio_seconds, abs=0.05)
    # The deltas add up to the totals, and nothing is counted twice.
    assert {(i.component, i.model, i.provider): i.quantity for i in conversation.usage_totals()} == pytest.approx(
        {(i.component, i.model, i.provider): 0.0 for i in conversation.usage_totals()}
        | {(c, m, p): q for c in Usage for (m, p), q in observer.usage_total(c).items()}
    )
    assert ended.reason == contracts.EndReason.COMPLETED
    assert len(ended.turn_latencies) == 1
    latency = ended.turn_latencies[0]
    assert latency.end_of_speech_to_first_audio_ms is not None and latency.end_of_speech_to_first_audio_ms > 0
    assert latency.llm_ttft_ms is not None and latency.tts_ttfb_ms is not None
    assert observer.ended == [ended]


async def test_language_and_voice_reach_the_wire(settings, sarvam, chat, calls) -> None:
    chat.script_replies("नमस्ते!")
    observer = RecordingObserver()
    conversation = Conversation(
        session_id="s5", config=config(language="hi-IN", voice="kavya"), providers=settings, observer=observer
    )
    await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [])

    assert sarvam.stt_connections[0].query["language-code"] == "hi-IN"
    assert sarvam.stt_connections[0].query["model"] == "saaras:v3"
    assert sarvam.tts_configs[0]["speaker"] == "kavya"
    assert sarvam.tts_configs[0]["target_language_code"] == "hi-IN"
    assert observer.final("agent")[0].language == "hi-IN"
    assert sarvam.violations == []


async def test_a_provider_that_keeps_failing_ends_the_session_and_keeps_what_was_said(
    settings, sarvam, chat, calls
) -> None:
    chat.script_replies("Hello, this is the clinic.")
    sarvam.script_transcripts("book me for friday", "hello are you there", "anyone")
    observer = RecordingObserver()
    conversation = Conversation(session_id="s6", config=config(), providers=settings, observer=observer)
    call: Call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")

    chat.fail_next(500, times=100)  # every retry of every later turn fails
    for _ in range(3):
        if observer.ended:
            break
        await call.caller.say(0.6)
        await asyncio.sleep(1.0)
    ended = await asyncio.wait_for(conversation.wait_ended(), timeout=30)

    assert ended.reason == contracts.EndReason.PROVIDER_ERROR
    assert "500" in ended.error
    # The caller's words were transcribed and reported before the LLM gave up: nothing is lost.
    assert [u.text for u in observer.final("user")][:1] == ["book me for friday"]
    assert observer.final("agent")[0].text == "Hello, this is the clinic."
    assert any(not recoverable for _, recoverable in observer.errors)
