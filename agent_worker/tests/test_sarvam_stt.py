"""The real Sarvam STT client against the loopback Sarvam fake speaking the streaming protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt

from agent_worker import contracts
from agent_worker.provider_settings import ProviderSettings
from agent_worker.providers import build_providers
from agent_worker.providers.sarvam_stt import SarvamSTT
from agent_worker.settings import SettingsError, load
from testsupport.fakes.sarvam import FakeSarvam, silence, tone

KEY = "sk-test-stt"
RATE = 16000
FAST_RETRY = APIConnectOptions(max_retry=2, retry_interval=0.01, timeout=5.0)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)


@pytest.fixture(scope="module")
def sarvam_server() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=KEY, end_silence_ms=300) as fake:
        yield fake


def frames(pcm: bytes, sample_rate: int = RATE) -> list[rtc.AudioFrame]:
    step = sample_rate // 50 * 2  # 20 ms frames, as a room or socket delivers them
    return [
        rtc.AudioFrame(pcm[i : i + step], sample_rate, 1, len(pcm[i : i + step]) // 2) for i in range(0, len(pcm), step)
    ]


def utterance(seconds: float = 0.6, sample_rate: int = RATE) -> bytes:
    return tone(seconds, sample_rate) + silence(0.5, sample_rate)


async def run_stream(
    client: SarvamSTT,
    pcm: bytes,
    *,
    conn_options: APIConnectOptions = FAST_RETRY,
    language: str | None = None,
    sample_rate: int = RATE,
) -> list[stt.SpeechEvent]:
    stream = client.stream(conn_options=conn_options, **({"language": language} if language else {}))
    for frame in frames(pcm, sample_rate):
        stream.push_frame(frame)
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    return events


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def kinds(events: list[stt.SpeechEvent]) -> list[str]:
    return [ev.type.value for ev in events if ev.type != stt.SpeechEventType.RECOGNITION_USAGE]


def usage_seconds(events: list[stt.SpeechEvent]) -> float:
    return sum(ev.recognition_usage.audio_duration for ev in events if ev.recognition_usage is not None)


async def test_language_model_and_key_reach_the_wire(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("hello there")
    client = SarvamSTT(api_key=KEY, language="hi-IN", ws_url=sarvam.ws_url)
    await run_stream(client, utterance())
    await client.aclose()

    [conn] = sarvam.stt_connections
    assert conn.headers["api-subscription-key"] == KEY
    assert conn.query["language-code"] == "hi-IN"
    assert conn.query["model"] == "saaras:v3"
    assert conn.query["vad_signals"] == "true"
    assert conn.query["sample_rate"] == "16000"
    assert conn.query["input_audio_codec"] == "pcm_s16le"
    assert sarvam.violations == []


async def test_vad_signals_become_turns_with_their_final_transcripts(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("hello there", "what is the weather")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    events = await run_stream(client, utterance() + utterance())
    await client.aclose()

    assert kinds(events) == [
        "start_of_speech",
        "final_transcript",
        "end_of_speech",
        "start_of_speech",
        "final_transcript",
        "end_of_speech",
    ]
    finals = [ev.alternatives[0] for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [f.text for f in finals] == ["hello there", "what is the weather"]
    assert {str(f.language) for f in finals} == {"en-IN"}


async def test_transcript_arriving_after_end_of_speech_still_precedes_the_turn_end(sarvam: FakeSarvam) -> None:
    sarvam.transcript_delay_s = 0.3  # Sarvam sends END_SPEECH first, the text a moment later
    sarvam.script_transcripts("late words")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    events = await run_stream(client, utterance())
    await client.aclose()

    assert kinds(events) == ["start_of_speech", "final_transcript", "end_of_speech"]
    assert events[-1].type == stt.SpeechEventType.END_OF_SPEECH


async def test_usage_is_the_audio_sent_and_matches_what_sarvam_received(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("one", "two")
    pcm = utterance(0.8) + utterance(0.4) + silence(0.33, RATE)
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    events = await run_stream(client, pcm)
    await client.aclose()

    sent_seconds = len(pcm) / 2 / RATE
    assert usage_seconds(events) == pytest.approx(sent_seconds, abs=1e-6)
    assert sarvam.stt_audio_seconds == pytest.approx(sent_seconds, abs=1e-6)


async def test_audio_at_another_rate_is_resampled_to_the_connection_rate(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("resampled")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    stream = client.stream(conn_options=FAST_RETRY)
    for frame in frames(utterance(sample_rate=48000), sample_rate=48000):
        stream.push_frame(frame)
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    await client.aclose()

    assert [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT] == [
        "resampled"
    ]
    assert sarvam.violations == []


async def test_a_wrong_key_fails_clearly_without_retrying(sarvam: FakeSarvam) -> None:
    client = SarvamSTT(api_key="sk-wrong", language="en-IN", ws_url=sarvam.ws_url)
    with pytest.raises(APIStatusError) as info:
        await run_stream(client, utterance())
    await client.aclose()

    assert info.value.status_code == 403
    assert info.value.retryable is False
    assert sarvam.stt_connections == []


async def test_rate_limited_handshake_is_retried_and_the_turn_survives(sarvam: FakeSarvam) -> None:
    sarvam.fail_next_connect("stt", 429, retry_after=1)
    sarvam.script_transcripts("after the retry")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    events = await run_stream(client, utterance())
    await client.aclose()

    assert [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT] == [
        "after the retry"
    ]
    assert len(sarvam.stt_connections) == 1


async def test_server_errors_on_every_attempt_end_the_stream_with_an_error(sarvam: FakeSarvam) -> None:
    sarvam.fail_next_connect("stt", 503, times=10)
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    with pytest.raises(APIConnectionError):
        await run_stream(client, utterance())
    await client.aclose()

    assert sarvam.stt_connections == []


async def test_a_dropped_socket_reconnects_and_later_speech_is_still_transcribed(sarvam: FakeSarvam) -> None:
    sarvam.drop_stt_after_audio_messages = 3  # cut during the first utterance
    sarvam.script_transcripts("heard after reconnecting")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    stream = client.stream(conn_options=FAST_RETRY)
    for frame in frames(utterance()):
        stream.push_frame(frame)
    await wait_for(lambda: len(sarvam.stt_connections) == 2)
    for frame in frames(utterance()):  # the user keeps talking after the network blip
        stream.push_frame(frame)
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    await client.aclose()

    texts = [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert "heard after reconnecting" in texts
    assert len(sarvam.stt_connections) == 2
    # every START_OF_SPEECH is closed, so the session never waits on a user who left with the socket
    assert kinds(events).count("start_of_speech") == kinds(events).count("end_of_speech")


async def test_a_dropped_socket_without_retries_raises(sarvam: FakeSarvam) -> None:
    sarvam.drop_stt_after_audio_messages = 3
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    with pytest.raises(APIConnectionError):
        await run_stream(client, utterance(), conn_options=NO_RETRY)
    await client.aclose()


async def test_a_malformed_frame_is_skipped(sarvam: FakeSarvam) -> None:
    sarvam.malformed_stt_frame = True
    sarvam.script_transcripts("still fine")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    events = await run_stream(client, utterance())
    await client.aclose()

    assert [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT] == [
        "still fine"
    ]


async def test_speech_cut_off_by_the_end_of_input_is_flushed_to_a_transcript(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("cut short")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    events = await run_stream(client, tone(0.6, RATE))  # no trailing silence
    await client.aclose()

    assert kinds(events) == ["start_of_speech", "final_transcript", "end_of_speech"]
    assert sarvam.violations == []


async def test_one_shot_recognize_uses_the_same_socket_protocol(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("one shot")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    event = await client.recognize(frames(tone(0.5, RATE)), conn_options=FAST_RETRY)
    await client.aclose()

    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert event.alternatives[0].text == "one shot"
    assert sarvam.violations == []


async def test_8khz_audio_goes_at_the_connection_rate_without_a_per_message_rate(sarvam: FakeSarvam) -> None:
    # Sarvam takes 8 kHz only as the connection's sample_rate; the fake refuses 8000 in a message.
    sarvam.script_transcripts("telephone quality")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url, sample_rate=8000)
    events = await run_stream(client, utterance(sample_rate=8000), sample_rate=8000)
    await client.aclose()

    assert sarvam.stt_connections[0].query["sample_rate"] == "8000"
    assert [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT] == [
        "telephone quality"
    ]
    assert sarvam.violations == []


async def test_saaras_v4_is_accepted_as_a_configured_model(sarvam: FakeSarvam) -> None:
    sarvam.script_transcripts("newer model")
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url, model="saaras:v4")
    events = await run_stream(client, utterance())
    await client.aclose()

    assert sarvam.stt_connections[0].query["model"] == "saaras:v4"
    assert [ev.alternatives[0].text for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT] == [
        "newer model"
    ]


def test_the_operator_picks_a_served_stt_model_and_usage_is_billed_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    config = contracts.SessionConfig(system_prompt="Hi.", voice="shubh", language="hi-IN", llm_model="sarvam-105b")
    pinned = build_providers(config, ProviderSettings(sarvam_api_key=KEY), sample_rate=16000)
    assert (pinned.stt.model, pinned.stt_billed_as.model) == ("saaras:v3", "saaras:v3")

    monkeypatch.setenv("SARVAM_STT_MODEL", "saaras:v4")
    chosen = build_providers(config, load(ProviderSettings, sarvam_api_key=KEY), sample_rate=16000)
    assert (chosen.stt.model, chosen.stt_billed_as.model) == ("saaras:v4", "saaras:v4")

    monkeypatch.setenv("SARVAM_STT_MODEL", "saaras:v3-realtime")
    with pytest.raises(SettingsError, match="SARVAM_STT_MODEL"):
        load(ProviderSettings, sarvam_api_key=KEY)


def test_models_served_on_another_endpoint_are_refused_up_front() -> None:
    # saaras:v3-realtime lives on /speech-to-text-realtime/ws with another message protocol.
    with pytest.raises(ValueError, match="saaras:v3-realtime"):
        SarvamSTT(api_key=KEY, language="en-IN", model="saaras:v3-realtime")


def test_unsupported_sample_rate_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="8000 or 16000"):
        SarvamSTT(api_key=KEY, language="en-IN", sample_rate=44100)


async def test_each_frame_reaches_sarvam_when_it_arrives_not_when_a_bigger_message_fills(sarvam: FakeSarvam) -> None:
    # Audio held back to fill a message reaches Sarvam's VAD late, which delays every turn's end.
    client = SarvamSTT(api_key=KEY, language="en-IN", ws_url=sarvam.ws_url)
    stream = client.stream(conn_options=FAST_RETRY)
    [first, second] = frames(silence(0.04, RATE))
    stream.push_frame(first)
    await wait_for(lambda: sarvam.stt_audio_seconds >= 0.02)
    stream.push_frame(second)
    await wait_for(lambda: sarvam.stt_audio_seconds >= 0.04)
    assert sarvam.stt_audio_seconds == pytest.approx(0.04)
    stream.end_input()
    await stream.aclose()
    await client.aclose()
