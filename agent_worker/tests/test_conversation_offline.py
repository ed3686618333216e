"""Whole conversations on the offline set — no keys, no network: the greeting is spoken by piper,
the caller's speech (piper's voice too, streamed in real time) is heard by pocketsphinx, and the
scripted reply echoing it is spoken back, billed like any other conversation."""

from __future__ import annotations

import asyncio

import pytest
from livekit.agents.voice.run_result import RunResult

from agent_worker import contracts
from agent_worker.conversation import Conversation
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from agent_worker.providers import OFFLINE_LLM_MODEL, OFFLINE_PROVIDER, OFFLINE_STT_MODEL, OFFLINE_TTS_MODEL
from agent_worker.providers.offline import llm as scripted
from agent_worker.providers.offline.tts import VOICES
from agent_worker.tests.conftest import SAMPLE_RATE, Call, RecordingObserver

PROMPT = "You are Asha, the front desk of the Pune clinic. Answer in one short sentence."
CALLER_SAYS = "Please book an appointment for tomorrow morning."
# Real-time audio both ways: the greeting alone plays for about five seconds.
TURN_TIMEOUT_S = 40.0

OFFLINE = ProviderSettings(speech_providers=SpeechMode.OFFLINE)


def config(**overrides: object) -> contracts.SessionConfig:
    return contracts.SessionConfig(system_prompt=PROMPT, **overrides)  # type: ignore[arg-type]


async def caller_speech(text: str) -> bytes:
    return await asyncio.to_thread(VOICES.synthesize, text, SAMPLE_RATE)


async def greeted(call: Call) -> None:
    observer = call.observer
    await observer.wait_for(
        lambda: observer.final("agent") != [] and observer.agent_states[-1:] == ["listening"], timeout=TURN_TIMEOUT_S
    )


@pytest.mark.slow
async def test_greets_hears_the_caller_and_echoes_them_with_usage(calls) -> None:
    observer = RecordingObserver()
    conversation = Conversation(session_id="off1", config=config(), providers=OFFLINE, observer=observer)
    assert conversation.providers_label == "offline"
    speech = await caller_speech(CALLER_SAYS)
    call: Call = await calls(conversation, observer)

    await greeted(call)
    assert observer.final("agent")[0].text == scripted.GREETING
    greeting_seconds = call.caller.played_seconds()
    assert greeting_seconds > 3.0  # the whole greeting was played as audio

    await call.caller.speak(speech)
    await observer.wait_for(
        lambda: len(observer.final("agent")) >= 2 and observer.agent_states[-1:] == ["listening"],
        timeout=TURN_TIMEOUT_S,
    )
    [heard] = observer.final("user")
    assert {"appointment", "tomorrow"} <= set(heard.text.split())
    reply = observer.final("agent")[1].text
    assert reply.startswith(f"You said: {heard.text}. ")
    assert "offline demo" in reply
    assert call.caller.played_seconds() - greeting_seconds > 3.0  # the reply was spoken too

    await conversation.end(contracts.EndReason.COMPLETED)
    ended = await conversation.wait_ended()
    Usage = contracts.UsageComponent
    stt = observer.usage_total(Usage.STT_SECONDS)
    assert list(stt) == [(OFFLINE_STT_MODEL, OFFLINE_PROVIDER)]
    # Every second the caller streamed is counted, from the first frame to the hang-up.
    assert stt[(OFFLINE_STT_MODEL, OFFLINE_PROVIDER)] > len(speech) / 2 / SAMPLE_RATE
    tts = observer.usage_total(Usage.TTS_CHARACTERS)
    assert tts == {(OFFLINE_TTS_MODEL, OFFLINE_PROVIDER): len(scripted.GREETING) + len(reply)}
    llm_in = observer.usage_total(Usage.LLM_INPUT_TOKENS)
    llm_out = observer.usage_total(Usage.LLM_OUTPUT_TOKENS)
    assert llm_out == {(OFFLINE_LLM_MODEL, OFFLINE_PROVIDER): len(scripted.GREETING.split()) + len(reply.split())}
    assert llm_in[(OFFLINE_LLM_MODEL, OFFLINE_PROVIDER)] > len(PROMPT.split())
    # The deltas add up to the conversation's own totals.
    assert {(i.component, i.model, i.provider): i.quantity for i in conversation.usage_totals()} == pytest.approx(
        {(c, m, p): q for c in Usage for (m, p), q in observer.usage_total(c).items()}
    )
    assert ended.reason == contracts.EndReason.COMPLETED
    [latency] = ended.turn_latencies
    assert latency.end_of_speech_to_first_audio_ms is not None and latency.end_of_speech_to_first_audio_ms > 0
    assert observer.errors == []


async def test_any_language_and_voice_run_on_the_one_offline_voice(calls) -> None:
    observer = RecordingObserver()
    conversation = Conversation(
        session_id="off2", config=config(language="hi-IN", voice="kavya"), providers=OFFLINE, observer=observer
    )
    # What is said and that it is voiced, not how fast: the greeting's audio is taken as made.
    call: Call = await calls(conversation, observer, realtime=False)
    await greeted(call)

    assert observer.final("agent")[0].text == scripted.GREETING
    assert observer.final("agent")[0].language == "hi-IN"
    assert call.caller.played_seconds() > 3.0
    assert observer.errors == []


@pytest.mark.slow
async def test_caller_barging_in_cuts_the_greeting_and_gets_an_answer(calls) -> None:
    observer = RecordingObserver()
    conversation = Conversation(
        session_id="off3", config=config(), providers=OFFLINE, observer=observer, aec_warmup_seconds=None
    )
    speech = await caller_speech("Good morning.")
    full_greeting_s = len(await caller_speech(scripted.GREETING)) / 2 / SAMPLE_RATE
    call: Call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.agent_states[-1:] == ["speaking"], timeout=TURN_TIMEOUT_S)
    await asyncio.sleep(1.0)

    speaking = asyncio.create_task(call.caller.speak(speech))
    await observer.wait_for(lambda: observer.interruptions == 1, timeout=TURN_TIMEOUT_S)
    await observer.wait_for(lambda: observer.agent_states[-1] != "speaking")
    # The VAD's start of speech cut the greeting: the caller heard only its beginning.
    assert call.caller.played_seconds() < full_greeting_s / 2
    await speaking
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2, timeout=TURN_TIMEOUT_S)

    assert observer.final("agent")[0].text.startswith("Hello!")
    [heard] = observer.final("user")
    assert "morning" in heard.text.split()
    assert observer.final("agent")[1].text.startswith(f"You said: {heard.text}. ")


async def test_typed_words_get_the_scripted_echo_spoken_and_billed(calls) -> None:
    """The agent's text behaviour without the round trip through speech: the caller's words go in
    as text (``session.run``), the reply comes back as the run's message, voiced and billed."""
    observer = RecordingObserver()
    conversation = Conversation(session_id="off4", config=config(), providers=OFFLINE, observer=observer)
    call: Call = await calls(conversation, observer, realtime=False)
    await greeted(call)
    greeting_seconds = call.caller.played_seconds()

    result: RunResult[None] = await conversation.session.run(user_input=CALLER_SAYS)

    reply = result.expect.next_event().is_message(role="assistant").event().item.text_content
    result.expect.no_more_events()
    assert reply is not None and reply.startswith(f"You said: {CALLER_SAYS}")
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2)
    assert observer.final("agent")[1].text == reply
    assert call.caller.played_seconds() > greeting_seconds  # the reply was voiced
    await conversation.end(contracts.EndReason.COMPLETED)
    await conversation.wait_ended()
    tts = observer.usage_total(contracts.UsageComponent.TTS_CHARACTERS)
    assert tts == {(OFFLINE_TTS_MODEL, OFFLINE_PROVIDER): len(scripted.GREETING) + len(reply)}
    assert observer.errors == []
