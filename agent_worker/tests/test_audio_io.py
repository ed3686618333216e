"""QueueAudioInput: what the session receives of the audio a transport pushes."""

import asyncio

import pytest

from agent_worker.audio_io import QueueAudioInput

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
