"""The real Sarvam TTS client against the loopback Sarvam fake speaking the streaming protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from livekit.agents import APIConnectOptions, APIError, APIStatusError, tts
from livekit.agents.metrics import TTSMetrics

from agent_worker.providers.sarvam_tts import MAX_TEXT_CHARS, SarvamTTS, split_for_sarvam
from agent_worker.providers.sentences import take_ready_text
from testsupport.fakes.sarvam import FakeSarvam

KEY = "sk-test-tts"
FAST_RETRY = APIConnectOptions(max_retry=2, retry_interval=0.01, timeout=5.0)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)
MS_PER_CHAR = 10.0


@pytest.fixture(scope="module")
def sarvam_server() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=KEY, tts_ms_per_char=MS_PER_CHAR, tts_chunk_ms=50) as fake:
        yield fake


def make_tts(sarvam: FakeSarvam, *, voice: str = "shubh", language: str = "hi-IN") -> SarvamTTS:
    return SarvamTTS(api_key=KEY, voice=voice, language=language, ws_url=sarvam.ws_url)


async def speak(client: SarvamTTS, *pieces: str, conn_options: APIConnectOptions = FAST_RETRY) -> float:
    """Stream ``pieces`` as an LLM would and return the seconds of audio received."""
    stream = client.stream(conn_options=conn_options)
    for piece in pieces:
        stream.push_text(piece)
    stream.end_input()
    seconds = sum([_provider_seconds(ev) async for ev in stream])
    await stream.aclose()
    return seconds


def _provider_seconds(ev: tts.SynthesizedAudio) -> float:
    # When a segment's audio has all gone out already, livekit's emitter ends it with a 10 ms
    # frame of silence of its own: whether it does depends on timing, and it is not Sarvam's audio.
    if ev.is_final and not any(ev.frame.data):
        return 0.0
    return ev.frame.duration


async def test_voice_language_model_rate_and_key_reach_the_wire(sarvam: FakeSarvam) -> None:
    client = make_tts(sarvam, voice="ritu", language="ta-IN")
    await speak(client, "Vanakkam, how are you today?")
    await client.aclose()

    [conn] = sarvam.tts_connections
    assert conn.headers["api-subscription-key"] == KEY
    assert conn.query == {"model": "bulbul:v3", "send_completion_event": "true"}
    [config] = sarvam.tts_configs
    assert config["speaker"] == "ritu"
    assert config["target_language_code"] == "ta-IN"
    assert config["speech_sample_rate"] == 16000
    assert config["output_audio_codec"] == "linear16"
    assert sarvam.violations == []


async def test_audio_length_follows_the_text_at_the_requested_rate(sarvam: FakeSarvam) -> None:
    text = "Namaste! Aaj mausam bahut achha hai."
    client = make_tts(sarvam)
    seconds = await speak(client, text)
    await client.aclose()

    assert seconds == pytest.approx(len(text) * MS_PER_CHAR / 1000, abs=0.01)
    assert seconds == pytest.approx(sarvam.tts_audio_seconds, abs=0.01)


async def test_first_audio_arrives_while_the_reply_is_still_being_written(sarvam: FakeSarvam) -> None:
    client = make_tts(sarvam)
    stream = client.stream(conn_options=FAST_RETRY)
    first_sentence = "The weather in Bengaluru is pleasant today. "
    for word in first_sentence.split(" ")[:-1]:
        stream.push_text(word + " ")
    first = await asyncio.wait_for(stream.__anext__(), 5)  # no more text, no flush: audio must come anyway
    assert first.frame.duration > 0
    stream.push_text("Carry an umbrella in the evening.")
    stream.end_input()
    rest = [ev async for ev in stream]
    await stream.aclose()
    await client.aclose()

    assert rest, "the second sentence was spoken too"
    texts = [text for _, text in sarvam.tts_texts]
    assert texts == [first_sentence, "Carry an umbrella in the evening."]
    assert sarvam.tts_first_audio_at[0] < sarvam.tts_texts[-1][0]


async def test_characters_metric_equals_characters_sarvam_received(sarvam: FakeSarvam) -> None:
    client = make_tts(sarvam)
    metrics: list[TTSMetrics] = []
    client.on("metrics_collected", metrics.append)
    reply = ["Sure. ", "Your order ", "ships tomorrow! ", "Anything else", " I can help with?"]
    await speak(client, *reply)
    await client.aclose()

    assert sum(m.characters_count for m in metrics) == len("".join(reply))
    assert sarvam.tts_characters == len("".join(reply))


async def test_long_text_is_split_within_the_message_limit(sarvam: FakeSarvam) -> None:
    long_text = ("word " * 1200).strip() + "."  # 6000 characters without a sentence end until the last
    sarvam.tts_ms_per_char = 0.5
    client = make_tts(sarvam)
    await speak(client, long_text)
    await client.aclose()

    sizes = [len(text) for _, text in sarvam.tts_texts]
    assert max(sizes) <= MAX_TEXT_CHARS
    assert "".join(text for _, text in sarvam.tts_texts) == long_text
    assert sarvam.violations == []


def test_splitting_keeps_every_character() -> None:
    text = "x" * 3000 + " tail"
    pieces = split_for_sarvam(text)
    assert "".join(pieces) == text
    assert all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert take_ready_text("Hello there. How are") == ("Hello there. ", "How are")
    assert take_ready_text("नमस्ते। आप कैसे") == ("नमस्ते। ", "आप कैसे")


async def test_one_shot_synthesize_returns_the_whole_utterance(sarvam: FakeSarvam) -> None:
    client = make_tts(sarvam)
    text = "Your balance is two hundred rupees."
    frame = await client.synthesize(text, conn_options=FAST_RETRY).collect()
    await client.aclose()

    assert frame.sample_rate == 16000
    assert frame.duration == pytest.approx(len(text) * MS_PER_CHAR / 1000, abs=0.015)


async def test_the_socket_is_reused_for_the_next_reply(sarvam: FakeSarvam) -> None:
    client = make_tts(sarvam)
    await speak(client, "First reply.")
    await speak(client, "Second reply.")
    await client.aclose()

    assert len(sarvam.tts_connections) == 1
    assert len(sarvam.tts_configs) == 2


async def test_rate_limited_handshake_is_retried(sarvam: FakeSarvam) -> None:
    sarvam.fail_next_connect("tts", 429, retry_after=1)
    client = make_tts(sarvam)
    seconds = await speak(client, "Retried and spoken.")
    await client.aclose()

    assert seconds > 0
    assert len(sarvam.tts_connections) == 1


async def test_an_unknown_voice_fails_clearly(sarvam: FakeSarvam) -> None:
    client = make_tts(sarvam, voice="nobody")
    with pytest.raises(APIStatusError) as info:
        await speak(client, "Hello there.")
    await client.aclose()

    assert info.value.status_code == 422
    assert info.value.retryable is False


async def test_a_dropped_socket_before_any_audio_is_retried_on_a_fresh_socket(sarvam: FakeSarvam) -> None:
    sarvam.drop_tts_after_audio_chunks = 0
    client = make_tts(sarvam)
    seconds = await speak(client, "Spoken on the second socket.")
    await client.aclose()

    assert seconds == pytest.approx(len("Spoken on the second socket.") * MS_PER_CHAR / 1000, abs=0.01)
    assert len(sarvam.tts_connections) == 2


async def test_a_drop_after_audio_was_played_is_an_error_not_a_repeat(sarvam: FakeSarvam) -> None:
    sarvam.drop_tts_after_audio_chunks = 2
    client = make_tts(sarvam)
    with pytest.raises(APIError):
        await speak(client, "This sentence is long enough to need several audio chunks.")
    await client.aclose()

    assert len(sarvam.tts_connections) == 1  # never re-spoken from the start


async def test_a_malformed_frame_is_skipped(sarvam: FakeSarvam) -> None:
    sarvam.malformed_tts_frame = True
    client = make_tts(sarvam)
    seconds = await speak(client, "Still spoken.")
    await client.aclose()

    assert seconds == pytest.approx(len("Still spoken.") * MS_PER_CHAR / 1000, abs=0.01)


async def test_slow_first_audio_still_arrives(sarvam: FakeSarvam) -> None:
    sarvam.first_audio_delay_s = 0.3
    client = make_tts(sarvam)
    assert await speak(client, "Eventually.") > 0
    await client.aclose()


def test_unsupported_sample_rate_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="sample rate"):
        SarvamTTS(api_key=KEY, voice="shubh", language="en-IN", sample_rate=44100)
