"""The Sarvam fake, driven by the official ``sarvamai`` SDK's async streaming clients.

The SDK is Sarvam's own client (pinned in requirements-dev.txt), generated from the same API
definition as the API reference; what it sends and how it parses the answers are the contract.
A fake that refused the SDK's messages or answered in shapes its models cannot parse fails here.
Where the SDK and the published docs disagree, each test says which side follows which source:
the fake accepts both, and our own clients send what the docs say (agent_worker/tests).
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from sarvamai import AsyncSarvamAI
from sarvamai.environment import SarvamAIEnvironment
from sarvamai.types import (
    AudioOutput,
    ErrorResponse,
    EventResponse,
    EventsData,
    SpeechToTextStreamingResponse,
    SpeechToTextTranscriptionData,
)

from testsupport.fakes.sarvam import (
    DEFAULT_END_SILENCE_MS,
    HIGH_VAD_END_SILENCE_MS,
    FakeSarvam,
    silence,
    tone,
)

# sarvamai 0.1.39 connects with websockets' legacy client, which websockets 14+ flags as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*websockets.*:DeprecationWarning")

KEY = "sk-sdk-contract"
RATE = 16000
MS_PER_CHAR = 10.0


@pytest.fixture
async def sarvam() -> AsyncIterator[FakeSarvam]:
    async with FakeSarvam(api_key=KEY, tts_ms_per_char=MS_PER_CHAR) as fake:
        yield fake


def sdk(fake: FakeSarvam, *, key: str = KEY) -> AsyncSarvamAI:
    # The SDK's own way to target another host: an environment with other base URLs.
    environment = SarvamAIEnvironment(base=fake.http_url, production=fake.ws_url, creative=fake.http_url)
    return AsyncSarvamAI(api_subscription_key=key, environment=environment)


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


async def wait_for(condition: Callable[[], bool]) -> None:
    """Until the fake has seen what was sent; no wall-clock window is asserted."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


# --- speech to text ----------------------------------------------------------------------------


async def test_sdk_stream_gets_vad_events_then_one_transcript_it_can_parse(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("namaste")
    client = sdk(sarvam)
    async with client.speech_to_text_streaming.connect(
        language_code="hi-IN",
        model="saaras:v3",
        sample_rate="16000",
        vad_signals="true",
        flush_signal="true",
        input_audio_codec="pcm_s16le",
        mode="transcribe",
    ) as ws:
        await ws.transcribe(audio=b64(tone(0.5, RATE) + silence(1.1, RATE)), encoding="audio/wav", sample_rate=RATE)
        received: list[SpeechToTextStreamingResponse] = [await ws.recv() for _ in range(3)]

    assert [r.type for r in received] == ["events", "events", "data"]
    start, end, transcript = (r.data for r in received)
    assert isinstance(start, EventsData) and start.signal_type == "START_SPEECH"
    assert isinstance(end, EventsData) and end.signal_type == "END_SPEECH"
    assert isinstance(transcript, SpeechToTextTranscriptionData)
    assert transcript.transcript == "namaste"
    assert transcript.language_code == "hi-IN"
    assert transcript.metrics.audio_duration > 0
    [conn] = sarvam.stt_connections
    assert conn.headers["api-subscription-key"] == KEY
    assert sarvam.violations == []


@pytest.mark.parametrize(
    ("high_vad", "end_silence_ms"),
    [(None, DEFAULT_END_SILENCE_MS), ("true", HIGH_VAD_END_SILENCE_MS)],
    ids=["default_vad", "high_vad_sensitivity"],
)
async def test_end_of_speech_comes_after_the_documented_silence_not_before(
    sarvam: FakeSarvam, high_vad: str | None, end_silence_ms: float
) -> None:
    # Sarvam's docs: about 1 s of silence ends an utterance, 0.5 s with high VAD sensitivity. A
    # fake that ended turns sooner would flatter every turn-latency figure measured against it.
    almost = tone(0.4, RATE) + silence(end_silence_ms / 1000 - 0.04, RATE)
    client = sdk(sarvam)
    async with client.speech_to_text_streaming.connect(
        language_code="en-IN", sample_rate="16000", vad_signals="true", high_vad_sensitivity=high_vad
    ) as ws:
        await ws.transcribe(audio=b64(almost), sample_rate=RATE)
        await wait_for(lambda: sarvam.stt_audio_seconds >= len(almost) / 2 / RATE)
        assert sarvam.stt_vad_signals == ["START_SPEECH"]

        await ws.transcribe(audio=b64(silence(0.04, RATE)), sample_rate=RATE)
        await wait_for(lambda: sarvam.stt_vad_signals == ["START_SPEECH", "END_SPEECH"])
        assert (await ws.recv()).data.signal_type == "START_SPEECH"  # type: ignore[union-attr]
        assert (await ws.recv()).data.signal_type == "END_SPEECH"  # type: ignore[union-attr]
    assert sarvam.violations == []


async def test_sdk_flush_finalises_an_utterance_still_open(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("cut short")
    client = sdk(sarvam)
    async with client.speech_to_text_streaming.connect(
        language_code="en-IN", vad_signals="true", flush_signal="true"
    ) as ws:
        await ws.transcribe(audio=b64(tone(0.5, RATE)), sample_rate=RATE)
        await ws.flush()
        kinds = [(await ws.recv()).type for _ in range(3)]
    assert kinds == ["events", "events", "data"]
    assert sarvam.stt_utterances == ["cut short"]
    assert sarvam.violations == []


async def test_sdk_at_8khz_sends_the_per_message_rate_the_docs_call_unsupported(sarvam: FakeSarvam) -> None:
    # SDK: AudioData.sample_rate is a required field, so transcribe() always sends one.
    # Docs (and the same field's docstring): "8kHz is only supported via connection parameter,
    # not in AudioData messages". The fake follows the docs and answers with an error frame;
    # our client leaves the field out at 8 kHz (agent_worker/tests/test_sarvam_stt.py).
    client = sdk(sarvam)
    async with client.speech_to_text_streaming.connect(language_code="en-IN", sample_rate="8000") as ws:
        await ws.transcribe(audio=b64(silence(0.1, 8000)), sample_rate=8000)
        answer = await ws.recv()
    assert answer.type == "error"
    assert len(sarvam.violations) == 1
    assert "8 kHz" in sarvam.violations[0]


async def test_sdk_models_for_this_endpoint_are_accepted_and_others_refused(sarvam: FakeSarvam) -> None:
    client = sdk(sarvam)
    async with client.speech_to_text_streaming.connect(language_code="en-IN", model="saaras:v4") as ws:
        await ws.transcribe(audio=b64(silence(0.1, RATE)), sample_rate=RATE)
        await wait_for(lambda: sarvam.stt_audio_seconds > 0)
    assert sarvam.violations == []

    # saaras:v3-realtime exists, on /speech-to-text-realtime/ws with another protocol.
    async with client.speech_to_text_streaming.connect(language_code="en-IN", model="saaras:v3-realtime") as ws:
        answer = await ws.recv()
    assert answer.type == "error"
    assert sarvam.violations == ["stt: unsupported model 'saaras:v3-realtime'"]


# --- text to speech ----------------------------------------------------------------------------


async def receive_until_final(ws: Any) -> list[AudioOutput]:
    chunks: list[AudioOutput] = []
    while True:
        message = await ws.recv()
        if isinstance(message, EventResponse):
            assert message.data.event_type == "final"
            return chunks
        assert isinstance(message, AudioOutput), message
        chunks.append(message)


def mp3_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data), mode="r", format="mp3") as container:
        samples = sum(int(frame.samples) for frame in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    return samples / rate


async def test_sdk_configure_defaults_are_accepted_and_answered_in_mp3(sarvam: FakeSarvam) -> None:
    # SDK configure() puts language_code (not the docs' target_language_code) on the wire and
    # always sends pitch and loudness (which bulbul:v3 ignores), mp3 at 128k and 22050 Hz.
    text = "Namaste, aap kaise hain?"
    client = sdk(sarvam)
    async with client.text_to_speech_streaming.connect(model="bulbul:v3", send_completion_event="true") as ws:
        await ws.configure(target_language_code="hi-IN", speaker="shubh")
        await ws.convert(text)
        await ws.flush()
        chunks = await receive_until_final(ws)

    [config] = sarvam.tts_configs
    assert config["language_code"] == "hi-IN" and "target_language_code" not in config
    assert {"pitch", "loudness"} <= config.keys()
    assert config["output_audio_codec"] == "mp3"
    assert {c.data.content_type for c in chunks} == {"audio/mpeg"}
    audio = b"".join(base64.b64decode(c.data.audio) for c in chunks)
    # An MP3 stream without a Xing header adds the encoder's delay and last-frame padding (two
    # 1152-sample frames at most, 0.1 s at 22050 Hz).
    assert mp3_seconds(audio) == pytest.approx(len(text) * MS_PER_CHAR / 1000, abs=0.11)
    assert sarvam.violations == []


async def test_sdk_linear16_audio_is_pcm_of_the_requested_rate(sarvam: FakeSarvam) -> None:
    text = "Vanakkam, ungalukku eppadi irukku?"
    client = sdk(sarvam)
    async with client.text_to_speech_streaming.connect(model="bulbul:v3") as ws:
        await ws.configure(
            target_language_code="ta-IN", speaker="kavya", speech_sample_rate=16000, output_audio_codec="linear16"
        )
        await ws.convert(text)
        await ws.flush()  # the documented default send_completion_event=true: the final event comes
        chunks = await receive_until_final(ws)

    pcm = b"".join(base64.b64decode(c.data.audio) for c in chunks)
    assert len(pcm) / 2 / 16000 == pytest.approx(len(text) * MS_PER_CHAR / 1000, abs=0.001)
    assert np.frombuffer(pcm, dtype="<i2").any()
    assert sarvam.violations == []


async def test_without_the_completion_event_the_flush_is_answered_with_audio_only(sarvam: FakeSarvam) -> None:
    client = sdk(sarvam)
    async with client.text_to_speech_streaming.connect(model="bulbul:v3", send_completion_event="false") as ws:
        await ws.configure(target_language_code="en-IN", speaker="shubh", output_audio_codec="linear16")
        await ws.convert("Short.")
        await ws.flush()
        await ws.convert("x" * 2501)  # a message over the limit: its error frame marks the end
        answers: list[Any] = []
        while not answers or not isinstance(answers[-1], ErrorResponse):
            answers.append(await ws.recv())
    assert all(isinstance(a, AudioOutput) for a in answers[:-1]) and len(answers) > 1
    assert sarvam.violations == ["tts: text must be 1-2500 characters, got 2501"]


async def test_a_second_config_speaks_the_buffered_text_first(sarvam: FakeSarvam) -> None:
    # SDK: "When a config update is sent, any text currently in the buffer will be automatically
    # flushed and processed before applying the new configuration."
    client = sdk(sarvam)
    async with client.text_to_speech_streaming.connect(model="bulbul:v3") as ws:
        await ws.configure(target_language_code="en-IN", speaker="shubh", output_audio_codec="linear16")
        await ws.convert("Hi.")  # under min_buffer_size: held
        await ws.configure(target_language_code="en-IN", speaker="ritu", output_audio_codec="linear16")
        first = await ws.recv()
    assert isinstance(first, AudioOutput)
    assert [c["speaker"] for c in sarvam.tts_configs] == ["shubh", "ritu"]
    assert sarvam.violations == []


async def test_a_wrong_key_is_refused_at_the_handshake(sarvam: FakeSarvam) -> None:
    from sarvamai.core.api_error import ApiError

    client = sdk(sarvam, key="sk-wrong")
    with pytest.raises(ApiError) as info:
        async with client.text_to_speech_streaming.connect(model="bulbul:v3"):
            pass
    assert info.value.status_code == 403
    assert sarvam.tts_connections == []


async def _first_answer_to_hello(sarvam: FakeSarvam, config: dict[str, Any]) -> dict[str, Any]:
    """The fake's first message after this TTS config, the text "Hello." and a flush."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{sarvam.ws_url}/text-to-speech/ws?model=bulbul:v3", headers={"api-subscription-key": KEY}
        ) as ws,
    ):
        await ws.send_json({"type": "config", "data": config})
        await ws.send_json({"type": "text", "data": {"text": "Hello."}})
        await ws.send_json({"type": "flush"})
        first: dict[str, Any] = await ws.receive_json()
        return first


@pytest.mark.parametrize(
    ("fields", "accepted"),
    [
        ({"target_language_code": "hi-IN"}, True),  # the docs' name, what our client sends
        ({"language_code": "hi-IN"}, True),  # the SDK's wire name
        ({"target_language_code": "hi-IN", "language_code": "hi-IN"}, True),
        ({"target_language_code": "hi-IN", "language_code": "ta-IN"}, False),
        ({}, False),
    ],
    ids=["docs", "sdk", "both_agreeing", "both_disagreeing", "neither"],
)
async def test_the_config_language_is_taken_under_either_name_but_must_be_one_language(
    sarvam: FakeSarvam, fields: dict[str, str], accepted: bool
) -> None:
    first = await _first_answer_to_hello(sarvam, {"speaker": "shubh", "output_audio_codec": "linear16", **fields})
    assert (first["type"] == "audio") is accepted
    assert (sarvam.violations == []) is accepted


@pytest.mark.parametrize(
    ("rate", "accepted"), [(16000, True), ("16000", True), ("44100", False), ("16k", False), (44100, False)]
)
async def test_the_config_sample_rate_is_taken_as_a_number_or_a_decimal_string(
    sarvam: FakeSarvam, rate: int | str, accepted: bool
) -> None:
    # Pipecat's SarvamTTSService sends it as a string (bench/peers runs it against this fake).
    config = {"target_language_code": "en-IN", "speaker": "shubh", "output_audio_codec": "linear16"}
    first = await _first_answer_to_hello(sarvam, {**config, "speech_sample_rate": rate})
    assert (first["type"] == "audio") is accepted
    assert (sarvam.violations == []) is accepted
    if accepted:
        assert sarvam.tts_audio_seconds == pytest.approx(len(base64.b64decode(first["data"]["audio"])) / 2 / 16000)
