"""Sarvam streaming speech-to-text (``saaras:v3`` on ``/speech-to-text/ws``) as a livekit STT.

livekit-plugins-sarvam's STT takes no socket URL (only its REST base URL), holds audio back to
fill 50 ms messages and asks for another default model; this thin client lets the URL come from
settings (and reach a loopback fake in tests): docs/providers.md has the comparison.

Wire protocol, as in the ``sarvamai`` SDK (0.1.39) and Sarvam's API reference: query
``language-code``, ``model``, ``vad_signals=true``, ``sample_rate``,
``input_audio_codec=pcm_s16le`` (raw PCM must be declared), ``flush_signal=true``; header
``api-subscription-key``; audio goes up as ``{"audio": {"data": <base64 s16le>, "sample_rate",
"encoding": "audio/wav"}}``, the per-message ``sample_rate`` left out at 8 kHz (Sarvam takes
8 kHz only as the connection parameter); Sarvam answers with VAD ``events`` and one final
``data`` transcript per utterance.

Events produced: START_OF_SPEECH / END_OF_SPEECH from Sarvam's VAD signals (so the session can
run ``turn_detection="stt"``), FINAL_TRANSCRIPT (always before its END_OF_SPEECH, which is what
livekit's STT turn detection needs to commit the turn with its text), and RECOGNITION_USAGE
carrying the seconds of audio actually sent, which is what Sarvam bills.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import aiohttp
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APITimeoutError,
    LanguageCode,
    stt,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from agent_worker import catalog
from agent_worker.providers.sarvam_socket import DEFAULT_WS_URL, SarvamSocket, body

PROVIDER = "sarvam"
DEFAULT_MODEL = "saaras:v3"
# Audio goes out as soon as one 20 ms frame of it has arrived: audio held back to fill a bigger
# message delays Sarvam's end-of-speech by up to that much on every turn (bench/README.md).
# A burst (a transport's large chunk, a session catching up) still goes in few messages of at
# most _MAX_CHUNK_MS each.
_MIN_CHUNK_MS = 20
_MAX_CHUNK_MS = 100
# Sarvam may send END_SPEECH just before the utterance's transcript; wait this long for it
# before ending the turn without text.
_FINAL_GRACE_S = 1.5
# After the input ends, how long to wait for the transcript of speech that was still open,
# and how long Sarvam must stay quiet before the stream is considered fully transcribed.
_DRAIN_TIMEOUT_S = 5.0
_DRAIN_QUIET_S = 0.5


@dataclass(frozen=True)
class _Options:
    language: str
    model: str
    sample_rate: int

    def path(self) -> str:
        query = {
            "language-code": self.language,
            "model": self.model,
            "vad_signals": "true",
            "flush_signal": "true",
            "sample_rate": str(self.sample_rate),
            "input_audio_codec": "pcm_s16le",
        }
        return f"/speech-to-text/ws?{urlencode(query)}"


class SarvamSTT(stt.STT):
    """Streaming Sarvam STT. ``language`` is a BCP-47 code Sarvam accepts (``en-IN``, ``hi-IN``
    …, or ``unknown`` to auto-detect); ``sample_rate`` 16000 or 8000 (input is resampled);
    ``model`` one the catalog lists as served on this endpoint (``saaras:v3``, ``saaras:v4``)."""

    def __init__(
        self,
        *,
        api_key: str,
        language: str,
        ws_url: str = DEFAULT_WS_URL,
        model: str = DEFAULT_MODEL,
        sample_rate: int = 16000,
    ) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError(f"Sarvam streaming STT takes 8000 or 16000 Hz audio, not {sample_rate}")
        served = catalog.sarvam_stt_models()
        if model not in served:
            raise ValueError(f"Sarvam STT model {model!r} is not served by this client (served: {', '.join(served)})")
        self._socket = SarvamSocket(api_key=api_key, ws_url=ws_url, label="STT")
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._opts = _Options(language=language, model=model, sample_rate=sample_rate)

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return PROVIDER

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SarvamSpeechStream:
        opts = self._opts
        if isinstance(language, str) and language:
            opts = replace(opts, language=language)
        return SarvamSpeechStream(stt=self, opts=opts, conn_options=conn_options)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        """One-shot recognition over the same socket: send the buffer, flush, take the transcript."""
        frame = rtc.combine_audio_frames(buffer)
        if frame.sample_rate != self._opts.sample_rate or frame.num_channels != 1:
            resampler = rtc.AudioResampler(frame.sample_rate, self._opts.sample_rate, num_channels=frame.num_channels)
            frames = [*resampler.push(frame), *resampler.flush()]
            frame = rtc.combine_audio_frames(frames)
        pcm = frame.data.tobytes()
        if frame.num_channels != 1:
            raise ValueError("SarvamSTT recognizes mono audio only")
        ws = await self._socket.connect(self._opts.path(), conn_options.timeout)
        try:
            for message, _ in _audio_messages(pcm, self._opts.sample_rate):
                await self._socket.send(ws, message)
            await self._socket.send(ws, _FLUSH)
            while True:
                data = await self._socket.receive(ws, within=conn_options.timeout)
                if data is None:
                    raise APIConnectionError(f"Sarvam STT closed before the transcript (code {ws.close_code})")
                if data.get("type") == "data":
                    transcript = body(data)
                    return stt.SpeechEvent(
                        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                        request_id=str(transcript.get("request_id") or ""),
                        alternatives=[
                            _speech_data(transcript, language if isinstance(language, str) else self._opts.language)
                        ],
                    )
        except TimeoutError:
            raise APITimeoutError("Sarvam STT gave no transcript in time") from None
        finally:
            await ws.close()

    async def aclose(self) -> None:
        await self._socket.aclose()


class SarvamSpeechStream(stt.SpeechStream):
    def __init__(self, *, stt: SarvamSTT, opts: _Options, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=opts.sample_rate)
        self._sarvam = stt
        self._opts = opts
        self._speaking = False
        self._final_received = False
        self._eos_pending: asyncio.TimerHandle | None = None
        self._unbilled_seconds = 0.0
        self._utterance_open = False  # speech started and its end-of-speech is not emitted yet
        self._utterance_closed = asyncio.Event()
        self._utterance_closed.set()
        self._server_activity = asyncio.Event()

    # --- events ------------------------------------------------------------------------------

    def _emit(self, event: stt.SpeechEvent) -> None:
        with contextlib.suppress(utils.aio.ChanClosed):
            self._event_ch.send_nowait(event)

    def _report_usage(self) -> None:
        """Bill what was sent so far; called per transcript and when a connection ends."""
        if self._unbilled_seconds <= 0:
            return
        seconds, self._unbilled_seconds = self._unbilled_seconds, 0.0
        self._emit(
            stt.SpeechEvent(
                type=stt.SpeechEventType.RECOGNITION_USAGE,
                recognition_usage=stt.RecognitionUsage(audio_duration=seconds),
            )
        )

    def _start_of_speech(self) -> None:
        if self._speaking:
            return
        self._end_of_speech()  # a new utterance closes any previous one still waiting for text
        self._speaking = True
        self._final_received = False
        self._utterance_open = True
        self._utterance_closed.clear()
        self._emit(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH, speech_start_time=time.time()))

    def _end_of_speech(self) -> None:
        if self._eos_pending is not None:
            self._eos_pending.cancel()
            self._eos_pending = None
        if not self._utterance_open:
            return
        self._speaking = False
        self._utterance_open = False
        self._utterance_closed.set()
        self._emit(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, speech_end_time=time.time()))

    def _on_vad(self, signal: str) -> None:
        if signal == "START_SPEECH":
            self._start_of_speech()
        elif signal == "END_SPEECH" and self._speaking:
            self._speaking = False
            if self._final_received:
                self._end_of_speech()
            elif self._eos_pending is None:
                self._eos_pending = asyncio.get_running_loop().call_later(_FINAL_GRACE_S, self._end_of_speech)

    def _on_transcript(self, body: dict[str, Any]) -> None:
        self._report_usage()
        text = str(body.get("transcript") or "").strip()
        if text:
            self._emit(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                    request_id=str(body.get("request_id") or ""),
                    alternatives=[_speech_data(body, self._opts.language)],
                )
            )
        self._final_received = True
        if not self._speaking:
            self._end_of_speech()

    # --- connection --------------------------------------------------------------------------

    async def _run(self) -> None:
        ws = await self._sarvam._socket.connect(self._opts.path(), self._conn_options.timeout)
        sender = asyncio.create_task(self._send_audio(ws), name="SarvamSTT.send")
        receiver = asyncio.create_task(self._receive(ws), name="SarvamSTT.receive")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                receiver.result()  # raises why the server side ended
                if not sender.done():
                    raise APIConnectionError("Sarvam STT closed the connection mid-stream")
            sender.result()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(receiver), _DRAIN_TIMEOUT_S)
            if receiver.done():
                receiver.result()
        finally:
            await utils.aio.cancel_and_wait(sender, receiver)
            await ws.close()
            self._report_usage()
            # A dropped socket must not leave the session believing the user is still talking.
            self._end_of_speech()

    async def _drain(self, receiver: asyncio.Task[None]) -> None:
        """Input ended: let Sarvam finish the audio it has (it sends no acknowledgement, so
        "finished" means no utterance open and a quiet moment), then hang up."""
        while not receiver.done():
            if self._utterance_open:
                await self._utterance_closed.wait()
                continue
            self._server_activity.clear()
            try:
                await asyncio.wait_for(self._server_activity.wait(), _DRAIN_QUIET_S)
            except TimeoutError:
                if not self._utterance_open:
                    return

    async def _send_audio(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        min_bytes = self._opts.sample_rate * _MIN_CHUNK_MS // 1000 * 2
        pending = bytearray()
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                pending += item.data.cast("B")
                if len(pending) >= min_bytes:
                    await self._send_pending(ws, pending)
            else:  # flush: send what is buffered and ask Sarvam to finalize now
                if pending:
                    await self._send_pending(ws, pending)
                if self._utterance_open:
                    await self._sarvam._socket.send(ws, _FLUSH)
        if pending:
            await self._send_pending(ws, pending)
        # End of input: have Sarvam finalize whatever speech it still holds.
        await self._sarvam._socket.send(ws, _FLUSH)

    async def _send_pending(self, ws: aiohttp.ClientWebSocketResponse, pending: bytearray) -> None:
        """Send the buffered audio and empty the buffer."""
        for message, pcm_bytes in _audio_messages(pending, self._opts.sample_rate):
            await self._send_message(ws, message, pcm_bytes)
        pending.clear()

    async def _send_message(self, ws: aiohttp.ClientWebSocketResponse, message: str, pcm_bytes: int) -> None:
        await self._sarvam._socket.send(ws, message)
        self._unbilled_seconds += pcm_bytes / 2 / self._opts.sample_rate

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            data = await self._sarvam._socket.receive(ws)
            self._server_activity.set()
            if data is None:
                if ws.close_code in (1000, 1001) and not self._utterance_open:
                    return
                raise self._sarvam._socket.closed(ws)
            kind = data.get("type")
            if kind == "events":
                self._on_vad(str(body(data).get("signal_type") or ""))
            elif kind == "data":
                self._on_transcript(body(data))


_FLUSH = json.dumps({"type": "flush"})


def _audio_message(pcm: bytes | memoryview, sample_rate: int) -> str:
    # Formatted, not json.dumps'd: base64 needs no JSON escaping, and scanning all of it for
    # escapes on every 20 ms of every session's audio was a measurable share of the event loop.
    data = base64.b64encode(pcm).decode("ascii")
    if sample_rate == 8000:
        # Sarvam's reference: "8kHz is only supported via connection parameter, not in AudioData
        # messages"; the connection already says 8000.
        return f'{{"audio": {{"data": "{data}", "encoding": "audio/wav"}}}}'
    return f'{{"audio": {{"data": "{data}", "sample_rate": {int(sample_rate)}, "encoding": "audio/wav"}}}}'


def _audio_messages(pcm: bytes | bytearray, sample_rate: int) -> Iterator[tuple[str, int]]:
    """``pcm`` as messages of at most ``_MAX_CHUNK_MS`` with the bytes each carries, base64'd
    straight from ``pcm``: a copy of every frame fewer than slicing it into bytes first."""
    step = sample_rate * _MAX_CHUNK_MS // 1000 * 2
    with memoryview(pcm) as view:
        for start in range(0, len(pcm), step):
            yield _audio_message(view[start : start + step], sample_rate), min(step, len(pcm) - start)


def _speech_data(body: dict[str, Any], requested_language: str) -> stt.SpeechData:
    language = str(body.get("language_code") or requested_language)
    return stt.SpeechData(language=LanguageCode(language), text=str(body.get("transcript") or "").strip())
