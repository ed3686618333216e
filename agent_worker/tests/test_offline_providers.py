"""The offline speech set, one component at a time: piper speaks, pocketsphinx hears what piper
said, and the scripted LLM streams, echoes, bills and stops when cancelled."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import llm, stt
from livekit.agents.metrics import LLMMetrics, TTSMetrics

from agent_worker.providers import OFFLINE_PROVIDER
from agent_worker.providers.offline import OfflineSTT, OfflineTTS, ScriptedLLM, notice
from agent_worker.providers.offline import llm as scripted
from agent_worker.providers.offline.stt import _POOL, RecognizerGone
from agent_worker.providers.offline.tts import VOICES
from agent_worker.providers.offline.vad import EnergyVAD, SpeechAudio, SpeechEnded, SpeechStarted
from agent_worker.providers.sentences import take_ready_text
from testsupport.fakes.sarvam import silence, tone

SENTENCE = "Please book an appointment for tomorrow morning."
RATE = 16000


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def frames(pcm: bytes, sample_rate: int, *, chunk_s: float = 0.02) -> list[rtc.AudioFrame]:
    step = int(sample_rate * chunk_s) * 2
    return [
        rtc.AudioFrame(pcm[i : i + step], sample_rate, 1, len(pcm[i : i + step]) // 2) for i in range(0, len(pcm), step)
    ]


@pytest.fixture(scope="module")
def spoken_sentence() -> bytes:
    """SENTENCE as piper says it, at 16 kHz (the voice loads once for the whole module)."""
    return VOICES.synthesize(SENTENCE, RATE)


async def listen(client: OfflineSTT, pcm: bytes, sample_rate: int = RATE) -> list[stt.SpeechEvent]:
    stream = client.stream()
    for frame in frames(pcm, sample_rate):
        stream.push_frame(frame)
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    return events


def kinds(events: list[stt.SpeechEvent]) -> list[str]:
    return [ev.type.value for ev in events if ev.type != stt.SpeechEventType.RECOGNITION_USAGE]


def finals(events: list[stt.SpeechEvent]) -> list[str]:
    return [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]


def usage_seconds(events: list[stt.SpeechEvent]) -> float:
    return sum(ev.recognition_usage.audio_duration for ev in events if ev.recognition_usage is not None)


# --------------------------------------------------------------------------- TTS


async def speak(client: OfflineTTS, *pieces: str) -> list[rtc.AudioFrame]:
    stream = client.stream()
    for piece in pieces:
        stream.push_text(piece)
    stream.end_input()
    heard = [ev.frame async for ev in stream]
    await stream.aclose()
    return heard


@pytest.mark.parametrize("sample_rate", [16000, 24000, 8000])
async def test_tts_speaks_audible_pcm_at_the_requested_rate_and_reports_characters(sample_rate: int) -> None:
    client = OfflineTTS(sample_rate=sample_rate, voice="shubh")
    metrics: list[TTSMetrics] = []
    client.on("metrics_collected", metrics.append)
    text = "Hello there. How are you today?"
    heard = await speak(client, "Hello ", "there. ", "How are ", "you today?")
    await client.aclose()

    assert {(f.sample_rate, f.num_channels) for f in heard} == {(sample_rate, 1)}
    pcm = b"".join(f.data.tobytes() for f in heard)
    seconds = len(pcm) / 2 / sample_rate
    assert 1.0 < seconds < 5.0  # about two seconds of speech for seven words
    assert rms(pcm) > 1000  # speech, not silence or hiss
    assert sum(m.characters_count for m in metrics) == len(text)
    assert {(m.metadata.model_provider, m.metadata.model_name) for m in metrics if m.metadata} == {
        (OFFLINE_PROVIDER, "piper")
    }


async def test_tts_first_sentence_is_heard_before_the_text_is_complete() -> None:
    client = OfflineTTS(sample_rate=RATE, voice="shubh")
    stream = client.stream()
    stream.push_text("Good morning. ")
    stream.push_text("We open at nine")
    first = await asyncio.wait_for(anext(aiter(stream)), timeout=10)
    assert first.frame.sample_rate == RATE
    stream.push_text(" tomorrow.")
    stream.end_input()
    rest = [ev.frame async for ev in stream]
    await stream.aclose()
    await client.aclose()
    total = first.frame.duration + sum(f.duration for f in rest)
    assert total > 2.0  # both sentences were spoken


def test_sentences_are_released_as_soon_as_they_end() -> None:
    assert take_ready_text("Hello there. How") == ("Hello there. ", "How")
    assert take_ready_text("Is it open? Yes! And") == ("Is it open? Yes! ", "And")
    assert take_ready_text("no end yet") == ("", "no end yet")
    long = "word " * 40
    ready, rest = take_ready_text(long + "tail")
    assert ready == long and rest == "tail"


async def test_tts_labels_itself_offline_and_says_which_voice_plays(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    client = OfflineTTS(sample_rate=RATE, voice="anushka-offline-test")
    assert (client.provider, client.model) == (OFFLINE_PROVIDER, "piper")
    assert "offline" in client.label
    for _ in range(2):
        await client.stream().aclose()
    mapped = [r.getMessage() for r in caplog.records if "anushka-offline-test" in r.getMessage()]
    assert mapped == ["offline TTS: voice 'anushka-offline-test' maps to the single offline voice en_US-joe-medium"]


# --------------------------------------------------------------------------- VAD


def test_vad_starts_on_sustained_energy_and_ends_after_silence() -> None:
    vad = EnergyVAD(sample_rate=RATE)
    events = vad.push(silence(0.5, RATE) + tone(0.5, RATE) + silence(0.6, RATE))
    assert [type(e) for e in events] == [SpeechStarted, SpeechAudio, SpeechEnded]
    started = events[0]
    assert isinstance(started, SpeechStarted)
    # The pre-roll keeps the audio just before the start, so the first phoneme is not clipped.
    assert len(started.pcm) / 2 / RATE >= 0.3


def test_vad_ignores_a_click() -> None:
    vad = EnergyVAD(sample_rate=RATE)
    assert vad.push(silence(0.3, RATE) + tone(0.04, RATE) + silence(1.0, RATE)) == []


def test_vad_tracks_a_noisy_line() -> None:
    vad = EnergyVAD(sample_rate=RATE)
    # A steady hum well above the absolute floor is background from its first moment ...
    assert vad.push(tone(1.0, RATE, frequency=120.0, amplitude=1500)) == []
    # ... and a voice clearly louder than it is still heard, and its end found.
    events = vad.push(tone(0.5, RATE, amplitude=8000) + tone(1.0, RATE, frequency=120.0, amplitude=1500))
    assert [type(e) for e in events] == [SpeechStarted, SpeechAudio, SpeechEnded]


def test_vad_flush_closes_an_open_utterance() -> None:
    vad = EnergyVAD(sample_rate=RATE)
    events = vad.push(silence(0.2, RATE) + tone(0.5, RATE))
    assert vad.in_speech
    assert [type(e) for e in [*events, *vad.flush()]] == [SpeechStarted, SpeechAudio, SpeechEnded]
    assert vad.flush() == []


# --------------------------------------------------------------------------- STT


async def test_stt_transcribes_what_piper_said_as_one_turn(spoken_sentence: bytes) -> None:
    client = OfflineSTT(language="en-US", sample_rate=RATE)
    pcm = silence(0.5, RATE) + spoken_sentence + silence(1.0, RATE)
    events = await listen(client, pcm)
    await client.aclose()

    assert kinds(events) == ["start_of_speech", "final_transcript", "end_of_speech"]
    [text] = finals(events)
    words = text.split()
    # pocketsphinx is weak on free speech; the content words of a clear sentence come through.
    assert "appointment" in words and "tomorrow" in words and "morning" in words
    assert usage_seconds(events) == pytest.approx(len(pcm) / 2 / RATE, abs=0.01)
    final = next(ev for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT)
    assert final.alternatives[0].language == "en-US"


async def test_stt_resamples_pipeline_audio_and_splits_two_utterances(spoken_sentence: bytes) -> None:
    rate = 48000
    one = VOICES.synthesize("Good morning.", rate)
    two = VOICES.synthesize("Please book an appointment for tomorrow morning.", rate)
    pcm = silence(0.3, rate) + one + silence(1.0, rate) + two + silence(1.0, rate)
    client = OfflineSTT(language="en-US", sample_rate=rate)
    events = await listen(client, pcm, sample_rate=rate)
    await client.aclose()

    assert kinds(events) == ["start_of_speech", "final_transcript", "end_of_speech"] * 2
    first, second = finals(events)
    assert "morning" in first.split()
    assert "appointment" in second.split() and "tomorrow" in second.split()
    assert usage_seconds(events) == pytest.approx(len(pcm) / 2 / rate, abs=0.02)


async def test_stt_input_ending_mid_sentence_still_gives_its_transcript(spoken_sentence: bytes) -> None:
    client = OfflineSTT(language="en-US", sample_rate=RATE)
    events = await listen(client, silence(0.3, RATE) + spoken_sentence)
    await client.aclose()

    assert kinds(events) == ["start_of_speech", "final_transcript", "end_of_speech"]
    assert "appointment" in finals(events)[0].split()


async def test_stt_hears_nothing_in_silence_but_bills_it() -> None:
    client = OfflineSTT(language="en-US", sample_rate=RATE)
    events = await listen(client, silence(2.0, RATE))
    await client.aclose()

    assert kinds(events) == []
    assert usage_seconds(events) == pytest.approx(2.0, abs=0.01)


async def test_stt_one_shot_recognize(spoken_sentence: bytes) -> None:
    client = OfflineSTT(language="en-US", sample_rate=RATE)
    event = await client.recognize(frames(spoken_sentence, RATE))
    await client.aclose()

    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert "appointment" in event.alternatives[0].text.split()


async def test_stt_replaces_a_decoder_process_that_died(spoken_sentence: bytes) -> None:
    first = await _POOL.acquire()
    first._process.kill()
    first._process.wait()
    with pytest.raises(RecognizerGone):
        first.feed(spoken_sentence)
    _POOL.release(first)  # a dead process is not pooled again

    client = OfflineSTT(language="en-US", sample_rate=RATE)
    events = await listen(client, silence(0.3, RATE) + spoken_sentence + silence(0.8, RATE))
    await client.aclose()
    assert "appointment" in finals(events)[0].split()


async def test_stt_decoding_never_stalls_the_event_loop(spoken_sentence: bytes) -> None:
    """pocketsphinx holds the GIL while decoding; it must run outside this interpreter, and this
    loop must only ever wait for it from a thread. Shown by cause, not by timing: with the decoder
    process frozen, the loop still runs other work until we let the decoder go on."""
    client = OfflineSTT(language="en-US", sample_rate=RATE)
    await client.recognize(frames(spoken_sentence, RATE))  # a warm decoder, pooled for the stream
    (recognizer,) = _POOL._free
    decoder = recognizer._process.pid
    assert decoder != os.getpid()
    os.kill(decoder, signal.SIGSTOP)
    # Only if the loop is stuck waiting on the decoder does this thread have to thaw it.
    thaw = threading.Timer(60, os.kill, (decoder, signal.SIGCONT))
    thaw.start()
    try:
        listening = asyncio.create_task(listen(client, (silence(0.8, RATE) + spoken_sentence) * 3 + silence(0.8, RATE)))
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert not listening.done()
        assert thaw.is_alive(), "the loop ran again only once the decoder was thawed"
    finally:
        thaw.cancel()
        os.kill(decoder, signal.SIGCONT)
    events = await listening
    await client.aclose()

    assert len(finals(events)) == 3


async def test_stt_says_it_is_offline_and_english_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    client = OfflineSTT(language="ta-IN", sample_rate=RATE)
    assert (client.provider, client.model) == (OFFLINE_PROVIDER, "offline-pocketsphinx")
    for _ in range(2):
        await client.stream().aclose()
    lines = [r.getMessage() for r in caplog.records if "ta-IN" in r.getMessage()]
    assert lines == ["offline STT: English-only pocketsphinx model; language ta-IN recognised as English"]


async def test_each_component_says_once_that_it_is_offline(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notice, "_said", set())  # as in a fresh process
    caplog.set_level(logging.WARNING)
    stt_client, tts_client, model = OfflineSTT(language="en-US"), OfflineTTS(), ScriptedLLM()
    for _ in range(2):
        await stt_client.stream().aclose()
        await tts_client.stream().aclose()
        await model.chat(chat_ctx=context(("user", "hi"))).aclose()

    lines = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("offline provider"))
    assert lines == [
        "offline provider: LLM is a scripted echo with no language model, not a real provider",
        "offline provider: STT is the bundled pocketsphinx en-US model, not a real provider",
        "offline provider: TTS is the bundled piper voice en_US-joe-medium, not a real provider",
    ]
    assert {c.provider for c in (stt_client, tts_client, model)} == {"offline"}


# --------------------------------------------------------------------------- scripted LLM


def context(*turns: tuple[str, str]) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for role, text in turns:
        ctx.add_message(role=role, content=text)  # type: ignore[arg-type]
    return ctx


async def collect(stream: llm.LLMStream) -> list[llm.ChatChunk]:
    chunks = [chunk async for chunk in stream]
    await stream.aclose()
    return chunks


def text_of(chunks: list[llm.ChatChunk]) -> str:
    return "".join(c.delta.content or "" for c in chunks if c.delta is not None)


async def test_llm_greets_first_in_several_chunks_with_usage() -> None:
    model = ScriptedLLM()
    ctx = context(("system", "You are Asha."), ("system", "Greet the caller in one short sentence."))
    chunks = await collect(model.chat(chat_ctx=ctx))

    assert text_of(chunks) == scripted.GREETING
    content = [c for c in chunks if c.delta is not None and c.delta.content]
    assert len(content) == len(scripted.GREETING.split())
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == len(content)
    assert usage.prompt_tokens == 3 + 7  # the words of both system messages
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_llm_echoes_the_callers_words_and_says_it_is_the_demo() -> None:
    model = ScriptedLLM()
    metrics: list[LLMMetrics] = []
    model.on("metrics_collected", metrics.append)
    ctx = context(("system", "You are Asha."), ("assistant", scripted.GREETING), ("user", "when do you open tomorrow?"))
    chunks = await collect(model.chat(chat_ctx=ctx))

    reply = text_of(chunks)
    assert reply.startswith("You said: when do you open tomorrow. ")
    assert "offline demo" in reply and "no real language model" in reply
    [m] = metrics
    assert m.completion_tokens == len(reply.split())
    assert m.prompt_tokens == 3 + len(scripted.GREETING.split()) + 5
    assert (m.metadata.model_provider, m.metadata.model_name) == (OFFLINE_PROVIDER, "scripted")  # type: ignore[union-attr]


async def test_llm_says_goodbye_when_the_turn_asks_for_it() -> None:
    ctx = context(("system", "You are Asha."), ("user", "hello"), ("system", "Say a short, friendly goodbye."))
    assert text_of(await collect(ScriptedLLM().chat(chat_ctx=ctx))) == scripted.GOODBYE


async def test_llm_with_nothing_heard_asks_again() -> None:
    ctx = context(("system", "You are Asha."), ("user", "  "))
    assert text_of(await collect(ScriptedLLM().chat(chat_ctx=ctx))) == scripted.NOT_HEARD


async def test_llm_stops_promptly_when_cancelled() -> None:
    model = ScriptedLLM()
    metrics: list[LLMMetrics] = []
    model.on("metrics_collected", metrics.append)
    stream = model.chat(chat_ctx=context(("user", "tell me everything")))
    received = [await anext(aiter(stream)), await anext(aiter(stream))]
    await stream.aclose()

    # Cancelled mid-reply, not waited on to the end of it.
    assert stream._task.cancelled()
    assert text_of(received) == "You said:"
    assert stream._task.done()  # nothing keeps streaming behind the interruption
    # An abandoned reply never reaches its usage chunk, as with a real model: nothing is billed.
    assert [(m.prompt_tokens, m.completion_tokens) for m in metrics] in ([], [(0, 0)])
