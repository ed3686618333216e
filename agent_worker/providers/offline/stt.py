"""Offline speech-to-text: pocketsphinx's bundled en-US model behind an energy VAD.

The session runs ``turn_detection="stt"``, so this stream behaves like the Sarvam one: it
emits START_OF_SPEECH when the caller starts talking and, once they have been quiet for about
half a second, RECOGNITION_USAGE for the audio received so far, the FINAL_TRANSCRIPT (when
anything was recognised) and then END_OF_SPEECH.

Audio is decoded while the caller speaks, so at the end of an utterance only the final search
remains. pocketsphinx holds the GIL while it works, so it runs in a child process
(``decoder_process``), never in this interpreter: the event loop only hands audio to a pipe,
from a worker thread. One recognizer task per stream consumes the VAD's events in order, which
keeps START / FINAL / END ordered even when a new utterance begins before the previous one is
decoded.

Decoder processes take ~0.5 s to start, so they are pooled per process and reused across calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    LanguageCode,
    stt,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from agent_worker.providers import OFFLINE_PROVIDER, OFFLINE_STT_MODEL
from agent_worker.providers.offline import decoder_process, notice
from agent_worker.providers.offline.vad import EnergyVAD, SpeechAudio, SpeechEnded, SpeechStarted, VADEvent

logger = logging.getLogger(__name__)

DECODER_SAMPLE_RATE = decoder_process.SAMPLE_RATE  # the bundled acoustic model is 16 kHz
RECOGNISED_LANGUAGE = "en-US"


class RecognizerGone(APIConnectionError):
    """The decoder process died; livekit retries the stream, which starts a fresh one."""


class _Recognizer:
    """One decoder process (see ``decoder_process``). Calls block, so they run in worker
    threads — blocking on a pipe releases the GIL — and each holds the lock, because a cancelled
    call can leave a thread still talking to the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Our own interpreter running our own script: no outside input reaches the command line.
        self._process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-P", decoder_process.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # stderr is inherited, so a crash in the child shows in the worker's log.
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._requests: IO[bytes] = self._process.stdin
        self._replies: IO[bytes] = self._process.stdout
        if self._replies.read(1) != decoder_process.READY:
            self.close()
            raise RecognizerGone("the offline STT decoder process failed to start")

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def begin(self, pcm: bytes) -> None:
        self._call(decoder_process.BEGIN, pcm)

    def feed(self, pcm: bytes) -> None:
        self._call(decoder_process.FEED, pcm)

    def finish(self) -> str:
        return self._call(decoder_process.FINISH, answered=True)

    def transcribe(self, pcm: bytes) -> str:
        return self._call(decoder_process.TRANSCRIBE, pcm, answered=True)

    def reset(self) -> None:
        self._call(decoder_process.RESET)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._requests.close()  # the child exits on end of input
        try:
            self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _call(self, op: bytes, payload: bytes = b"", *, answered: bool = False) -> str:
        with self._lock:
            try:
                decoder_process.write_request(self._requests, op, payload)
                return decoder_process.read_reply(self._replies) if answered else ""
            except (OSError, EOFError, ValueError) as e:
                raise RecognizerGone(
                    f"the offline STT decoder process is gone (exit code {self._process.poll()})"
                ) from e


class _RecognizerPool:
    """Loaded decoders, shared by the conversations of one process."""

    def __init__(self) -> None:
        self._free: list[_Recognizer] = []
        self._lock = threading.Lock()
        self.load_seconds: list[float] = []

    def _take_or_load(self) -> _Recognizer:
        while True:
            with self._lock:
                if not self._free:
                    break
                recognizer = self._free.pop()
            try:
                recognizer.reset()
                return recognizer
            except RecognizerGone:
                recognizer.close()
        started = time.perf_counter()
        recognizer = _Recognizer()
        elapsed = time.perf_counter() - started
        self.load_seconds.append(elapsed)
        logger.info("offline STT: pocketsphinx decoder process ready in %.2f s", elapsed)
        return recognizer

    async def acquire(self) -> _Recognizer:
        return await asyncio.to_thread(self._take_or_load)

    def release(self, recognizer: _Recognizer) -> None:
        if not recognizer.alive:
            return
        with self._lock:
            self._free.append(recognizer)

    def prewarm(self) -> None:
        """Load one decoder into the pool (blocking; call from a thread)."""
        self.release(self._take_or_load())


_POOL = _RecognizerPool()


class OfflineSTT(stt.STT):
    """Streaming offline STT. ``language`` is accepted whatever it is, but the model is English;
    ``sample_rate`` is the pipeline's rate (audio is resampled to 16 kHz for the decoder)."""

    def __init__(self, *, language: str, sample_rate: int = 16000) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._language = language
        self._sample_rate = sample_rate
        self._prewarm_task: asyncio.Future[None] | None = None

    @property
    def model(self) -> str:
        return OFFLINE_STT_MODEL

    @property
    def provider(self) -> str:
        return OFFLINE_PROVIDER

    @property
    def language(self) -> str:
        return self._language

    def _announce(self) -> None:
        notice.announce("STT", "the bundled pocketsphinx en-US model")
        if not self._language.lower().startswith("en-us"):
            notice.once(
                f"stt-language:{self._language}",
                "offline STT: English-only pocketsphinx model; language %s recognised as English",
                self._language,
            )

    def prewarm(self) -> None:
        """Load a decoder in the background so the caller's first words are not delayed."""
        if self._prewarm_task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: load on first use instead
                self._prewarm_task = asyncio.get_running_loop().run_in_executor(None, _POOL.prewarm)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> OfflineSpeechStream:
        self._announce()
        return OfflineSpeechStream(stt=self, conn_options=conn_options)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        self._announce()
        pcm = _pcm_16k_mono(rtc.combine_audio_frames(buffer))
        recognizer = await _POOL.acquire()
        try:
            text = await asyncio.to_thread(recognizer.transcribe, pcm)
        finally:
            _POOL.release(recognizer)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid(),
            alternatives=[stt.SpeechData(language=LanguageCode(RECOGNISED_LANGUAGE), text=text)],
        )

    async def aclose(self) -> None:
        if self._prewarm_task is not None:
            with contextlib.suppress(Exception):
                await self._prewarm_task


class _Commands:
    """The VAD's events on their way to the recognizer; ``None`` ends the stream."""

    def __init__(self) -> None:
        self._items: deque[VADEvent | None] = deque()
        self._ready = asyncio.Event()

    def put(self, item: VADEvent | None) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> VADEvent | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def take_audio(self) -> bytes:
        """Audio queued right behind the current command, taken now: one thread hop, not many."""
        chunks = []
        while self._items and isinstance(self._items[0], SpeechAudio):
            chunks.append(self._items.popleft().pcm)  # type: ignore[union-attr]
        return b"".join(chunks)


@dataclass
class _StreamState:
    """What the VAD side and the recognizer side of one stream share (same event loop)."""

    commands: _Commands = field(default_factory=_Commands)
    unbilled_seconds: float = 0.0
    utterance_open: bool = False  # START_OF_SPEECH emitted, END_OF_SPEECH not yet


class OfflineSpeechStream(stt.SpeechStream):
    def __init__(self, *, stt: OfflineSTT, conn_options: APIConnectOptions) -> None:
        # The base class resamples whatever the pipeline pushes to the decoder's rate.
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=DECODER_SAMPLE_RATE)
        self._state = _StreamState()

    def _emit(self, event: stt.SpeechEvent) -> None:
        with contextlib.suppress(utils.aio.ChanClosed):
            self._event_ch.send_nowait(event)

    def _report_usage(self) -> None:
        seconds, self._state.unbilled_seconds = self._state.unbilled_seconds, 0.0
        if seconds > 0:
            self._emit(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.RECOGNITION_USAGE,
                    recognition_usage=stt.RecognitionUsage(audio_duration=seconds),
                )
            )

    def _end_of_speech(self) -> None:
        if self._state.utterance_open:
            self._state.utterance_open = False
            self._emit(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, speech_end_time=time.time()))

    async def _run(self) -> None:
        # A retry (livekit runs _run again after a RecognizerGone) starts with nothing queued.
        self._state.commands = _Commands()
        recognizer = await _POOL.acquire()
        recognizing = asyncio.create_task(self._recognize(recognizer), name="OfflineSTT.recognize")
        try:
            vad = EnergyVAD(sample_rate=DECODER_SAMPLE_RATE)
            async for item in self._input_ch:
                if isinstance(item, rtc.AudioFrame):
                    self._state.unbilled_seconds += item.samples_per_channel / item.sample_rate
                    events = vad.push(item.data.tobytes())
                else:  # flush: whatever the caller said so far is a complete utterance
                    events = vad.flush()
                for event in events:
                    self._state.commands.put(event)
                if recognizing.done():
                    break  # it failed; its exception is raised below
            for event in vad.flush():
                self._state.commands.put(event)
            self._state.commands.put(None)
            await recognizing
        finally:
            await utils.aio.cancel_and_wait(recognizing)
            _POOL.release(recognizer)
            self._report_usage()
            # A stream that stops mid-utterance must not leave the session thinking the caller still talks.
            self._end_of_speech()

    async def _recognize(self, recognizer: _Recognizer) -> None:
        """Runs the decoder in worker threads, emitting events in the order the VAD saw them."""
        while (command := await self._state.commands.get()) is not None:
            if isinstance(command, SpeechStarted):
                self._state.utterance_open = True
                self._emit(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH, speech_start_time=time.time()))
                await asyncio.to_thread(recognizer.begin, command.pcm + self._state.commands.take_audio())
            elif isinstance(command, SpeechAudio):
                await asyncio.to_thread(recognizer.feed, command.pcm + self._state.commands.take_audio())
            elif isinstance(command, SpeechEnded):
                text = await asyncio.to_thread(recognizer.finish)
                self._report_usage()
                if text:
                    self._emit(_final(text))
                self._end_of_speech()


def _final(text: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=utils.shortuuid(),
        alternatives=[stt.SpeechData(language=LanguageCode(RECOGNISED_LANGUAGE), text=text, confidence=1.0)],
    )


def _pcm_16k_mono(frame: rtc.AudioFrame) -> bytes:
    if frame.num_channels != 1:
        raise ValueError("OfflineSTT recognizes mono audio only")
    if frame.sample_rate == DECODER_SAMPLE_RATE:
        return frame.data.tobytes()
    resampler = rtc.AudioResampler(frame.sample_rate, DECODER_SAMPLE_RATE, num_channels=1)
    return b"".join(f.data.tobytes() for f in [*resampler.push(frame), *resampler.flush()])
