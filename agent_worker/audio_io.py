"""Audio in and out of an ``AgentSession`` for transports that are not a LiveKit room.

``QueueAudioInput`` takes the caller's PCM as the transport receives it; ``CallbackAudioOutput``
hands the agent's PCM to the transport paced in real time, so that clearing it on a barge-in
really stops the audio (and pausing it, while a caller's words may be a backchannel, holds the
rest for a resume), and it reports playout to the session the way livekit's room output
does — the session waits on those reports to end a turn and to cut the agent's transcript to
what was heard. Both run on the session's event loop; call ``push`` from that loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import utils
from livekit.agents.voice import io

logger = logging.getLogger(__name__)

FRAME_MS = 20
# How far ahead of the listener's playhead audio is sent: enough to ride out scheduling jitter,
# small enough that a barge-in cuts the agent off at once.
SEND_AHEAD_SECONDS = 0.06


def _samples_per_frame(sample_rate: int) -> int:
    return sample_rate * FRAME_MS // 1000


class QueueAudioInput(io.AudioInput):
    """The caller's audio: ``push`` s16le mono PCM at ``sample_rate`` in any chunk size;
    ``close`` ends the input. When the session falls behind by more than
    ``max_buffered_seconds`` the oldest audio is dropped, so a stalled pipeline cannot grow
    memory without bound or answer speech from long ago."""

    def __init__(self, *, sample_rate: int, max_buffered_seconds: float = 5.0) -> None:
        super().__init__(label="QueueAudioInput")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if max_buffered_seconds <= 0:
            raise ValueError(f"max_buffered_seconds must be positive, got {max_buffered_seconds}")
        self._sample_rate = sample_rate
        self._bstream = utils.audio.AudioByteStream(
            sample_rate=sample_rate, num_channels=1, samples_per_channel=_samples_per_frame(sample_rate)
        )
        self._frames: deque[rtc.AudioFrame] = deque()
        self._max_frames = max(1, int(max_buffered_seconds * 1000 / FRAME_MS))
        self._available = asyncio.Event()
        self._closed = False
        self.dropped_seconds = 0.0

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, pcm: bytes) -> None:
        """Audio pushed after ``close`` is ignored: the transport may still be draining."""
        if self._closed:
            return
        for frame in self._bstream.push(pcm):
            self._append(frame)

    def close(self) -> None:
        if self._closed:
            return
        for frame in self._bstream.flush():
            self._append(frame)
        self._closed = True
        self._available.set()

    def _append(self, frame: rtc.AudioFrame) -> None:
        self._frames.append(frame)
        if len(self._frames) > self._max_frames:
            dropped = self._frames.popleft()
            if not self.dropped_seconds:
                logger.warning("Caller audio is arriving faster than it is consumed; dropping the oldest")
            self.dropped_seconds += dropped.duration
        self._available.set()

    async def __anext__(self) -> rtc.AudioFrame:
        while not self._frames:
            if self._closed:
                raise StopAsyncIteration
            self._available.clear()
            await self._available.wait()
        if len(self._frames) == 1:
            return self._frames.popleft()
        # Frames that are all waiting (a transport's large chunk, a filled gap, a session that
        # fell behind) would each be taken in this same loop iteration anyway; as one frame they
        # reach the STT at the same moment, but cross the session's per-frame path once.
        frames = list(self._frames)
        self._frames.clear()
        return rtc.combine_audio_frames(frames)


@dataclass(frozen=True)
class _Item:
    generation: int
    frame: rtc.AudioFrame | None  # None marks the end of a segment (flush)


class CallbackAudioOutput(io.AudioOutput):
    """The agent's audio to a transport: ``on_audio`` receives s16le mono PCM at ``sample_rate``
    (the session resamples to it). With ``realtime`` the audio is released no faster than it
    plays; without it (tests, benchmarks) as fast as ``on_audio`` takes it.

    ``clear_buffer`` (a barge-in) drops everything not yet sent at once and reports the segment
    interrupted at the position the listener had reached. ``pause`` stops sending at once and
    keeps the rest; ``resume`` sends it from where it stopped."""

    def __init__(
        self,
        *,
        sample_rate: int,
        on_audio: Callable[[bytes], Awaitable[None]],
        realtime: bool = True,
    ) -> None:
        super().__init__(
            label="CallbackAudioOutput",
            capabilities=io.AudioOutputCapabilities(pause=True),
            sample_rate=sample_rate,
        )
        self._on_audio = on_audio
        self._realtime = realtime
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._generation = 0
        self._capturing = False  # frames of the current segment captured, flush not yet seen
        self._discard_until_flush = False  # a cleared segment whose producer has not flushed yet
        self._segment_open = False  # captured and its playback_finished not reported yet
        self._segment_started = False
        self._segment_sent = 0.0  # seconds of the open segment handed to on_audio
        self._play_until = 0.0  # monotonic time the listener's playhead reaches the end of what was sent
        self._wake: asyncio.Future[None] | None = None  # the player's pacing wait, ended early by a clear
        self._playing = asyncio.Event()  # cleared while paused
        self._playing.set()
        self._task: asyncio.Task[None] | None = None
        self.last_frame_sent_at: float | None = None  # monotonic; for measuring barge-in stop time

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._discard_until_flush:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._play(), name="callback-audio-output")
        if not self._capturing:
            self._capturing = True
            self._segment_open = True
            self._segment_started = False
            self._segment_sent = 0.0
        self._queue.put_nowait(_Item(self._generation, frame))

    def flush(self) -> None:
        super().flush()
        if self._discard_until_flush:
            self._discard_until_flush = False
            return
        if not self._capturing:
            return  # nothing was captured since the last flush: no segment to finish
        self._capturing = False
        self._queue.put_nowait(_Item(self._generation, None))

    def clear_buffer(self) -> None:
        self._generation += 1
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._wake is not None:
            _resolve(self._wake)
        if self._capturing:
            # The producer is still mid-segment; what it sends until its flush belongs to the
            # segment being cleared, which the base class counts as one.
            self._capturing = False
            self._discard_until_flush = True
        if self._segment_open:
            unheard = max(0.0, self._play_until - time.monotonic()) if self._realtime else 0.0
            self._finish(position=max(0.0, self._segment_sent - unheard), interrupted=True)
            self._play_until = time.monotonic()

    def pause(self) -> None:
        super().pause()
        self._playing.clear()

    def resume(self) -> None:
        super().resume()
        self._playing.set()

    def _finish(self, *, position: float, interrupted: bool) -> None:
        self._segment_open = False
        self.on_playback_finished(playback_position=position, interrupted=interrupted)

    async def aclose(self) -> None:
        self.clear_buffer()
        if self._task is not None:
            await utils.aio.cancel_and_wait(self._task)
            self._task = None

    async def _play(self) -> None:
        while True:
            item = await self._queue.get()
            if item.generation != self._generation:
                continue
            if item.frame is None:
                await self._wait_until(self._play_until, item.generation)
                if item.generation == self._generation and self._segment_open:
                    self._finish(position=self._segment_sent, interrupted=False)
                continue
            if not self._segment_started:
                self._segment_started = True
                self.on_playback_started(created_at=time.time())
            for pcm, seconds in _pieces(item.frame):
                if not self._playing.is_set():
                    await self._wait_resumed(item.generation)
                if item.generation != self._generation:
                    break
                try:
                    await self._on_audio(pcm)
                except Exception:
                    # A transport that cannot take audio any more is closing; the session ends
                    # through the transport, and playout must still be reported so it does not hang.
                    logger.exception("Sending agent audio failed")
                if item.generation != self._generation:
                    break
                self.last_frame_sent_at = time.monotonic()
                self._segment_sent += seconds
                if self._realtime:
                    self._play_until = max(self._play_until, time.monotonic()) + seconds
                    await self._wait_until(self._play_until - SEND_AHEAD_SECONDS, item.generation)

    async def _wait_resumed(self, generation: int) -> None:
        """Wait for ``resume``, or for a clear of this segment (its rest is then dropped)."""
        loop = asyncio.get_running_loop()
        while not self._playing.is_set() and generation == self._generation:
            wake: asyncio.Future[None] = loop.create_future()
            self._wake = wake
            resumed: asyncio.Future[bool] = asyncio.ensure_future(self._playing.wait())
            waits: set[asyncio.Future[Any]] = {wake, resumed}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                resumed.cancel()
                self._wake = None

    async def _wait_until(self, deadline: float, generation: int) -> None:
        """Sleep until ``deadline`` (monotonic) unless the buffer is cleared first.

        A future and a timer, not ``asyncio.wait_for``: on Python 3.11 wait_for swallows a
        cancellation that arrives as the awaited event fires, so a clear followed at once by
        ``aclose`` (a hang-up while the agent speaks) left the player running and ``aclose``
        waiting for it forever; wait_for also cost a task per 20 ms frame."""
        if not self._realtime:
            return
        delay = deadline - time.monotonic()
        if delay <= 0 or generation != self._generation:
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, _resolve, wake)
        self._wake = wake
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None


def _pieces(frame: rtc.AudioFrame) -> Iterator[tuple[bytes, float]]:
    """``frame`` as PCM pieces of at most ``FRAME_MS`` and their durations. The TTS hands over
    frames of up to 200 ms; sent whole, one would put that much audio past ``SEND_AHEAD_SECONDS``
    in the listener's buffer, out of a barge-in's reach."""
    data = frame.data.tobytes()
    step = _samples_per_frame(frame.sample_rate) * frame.num_channels * 2
    for start in range(0, len(data), step):
        pcm = data[start : start + step]
        yield pcm, len(pcm) / (2 * frame.num_channels * frame.sample_rate)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
