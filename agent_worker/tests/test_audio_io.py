"""QueueAudioInput: what the session receives of the audio a transport pushes; CallbackAudioOutput:
what the transport receives of the agent's audio around a pause."""

import asyncio

import pytest
from livekit import rtc

from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput

RATE = 16000
FRAME_BYTES = RATE * 20 // 1000 * 2


def _pcm(n_bytes: int, start: int = 0) -> bytes:
    return bytes((start + i) % 251 for i in range(n_bytes))


async def test_audio_already_waiting_is_one_frame_with_all_of_it_in_order() -> None:
    audio = QueueAudioInput(sample_rate=RATE)
    pcm = _pcm(FRAME_BYTES * 5)
    audio.push(pcm)
    frame = await anext(audio)
    assert frame.data.tobytes() == pcm
    assert frame.sample_rate == RATE
    assert frame.num_channels == 1
    assert frame.duration == pytest.approx(0.1)


async def test_a_frame_is_handed_over_as_soon_as_it_is_complete() -> None:
    audio = QueueAudioInput(sample_rate=RATE)
    waiting = asyncio.ensure_future(anext(audio))
    first = _pcm(FRAME_BYTES)
    audio.push(first[:100])
    await asyncio.sleep(0)
    assert not waiting.done()
    audio.push(first[100:])
    frame = await waiting
    assert frame.data.tobytes() == first


async def test_overflow_drops_the_oldest_audio_and_close_ends_after_the_rest() -> None:
    audio = QueueAudioInput(sample_rate=RATE, max_buffered_seconds=0.04)
    pcm = _pcm(FRAME_BYTES * 3)
    audio.push(pcm)
    audio.close()
    frame = await anext(audio)
    assert frame.data.tobytes() == pcm[FRAME_BYTES:]
    assert audio.dropped_seconds == pytest.approx(0.02)
    with pytest.raises(StopAsyncIteration):
        await anext(audio)


def _frame(pcm: bytes) -> rtc.AudioFrame:
    return rtc.AudioFrame(pcm, RATE, 1, len(pcm) // 2)


async def test_a_paused_output_sends_nothing_and_resumes_with_the_next_piece_not_the_first() -> None:
    sent: list[bytes] = []
    paused = asyncio.Event()

    async def on_audio(pcm: bytes) -> None:
        sent.append(pcm)
        if len(sent) == 2:
            output.pause()
            paused.set()

    output = CallbackAudioOutput(sample_rate=RATE, on_audio=on_audio, realtime=False)
    finished: list[tuple[float, bool]] = []
    output.on("playback_finished", lambda ev: finished.append((ev.playback_position, ev.interrupted)))
    pcm = _pcm(FRAME_BYTES * 5)
    await output.capture_frame(_frame(pcm))
    output.flush()
    await paused.wait()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [pcm[:FRAME_BYTES], pcm[FRAME_BYTES : 2 * FRAME_BYTES]]
    assert finished == []

    output.resume()
    await output.wait_for_playout()
    assert b"".join(sent) == pcm  # every piece once, in order
    assert finished == [(pytest.approx(0.1), False)]
    await output.aclose()


async def test_clearing_a_paused_output_drops_the_rest_and_reports_what_was_sent() -> None:
    sent: list[bytes] = []
    output = CallbackAudioOutput(sample_rate=RATE, on_audio=lambda pcm: _record(sent, pcm), realtime=False)
    output.pause()
    await output.capture_frame(_frame(_pcm(FRAME_BYTES * 3)))
    output.flush()
    for _ in range(5):
        await asyncio.sleep(0)
    output.clear_buffer()
    event = await output.wait_for_playout()
    output.resume()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == []
    assert (event.playback_position, event.interrupted) == (0.0, True)
    await output.aclose()


async def _record(sent: list[bytes], pcm: bytes) -> None:
    sent.append(pcm)
