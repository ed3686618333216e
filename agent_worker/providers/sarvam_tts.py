"""Sarvam streaming text-to-speech (``bulbul:v3`` on ``/text-to-speech/ws``) as a livekit TTS.

Wire protocol, as in Sarvam's API reference and the ``sarvamai`` SDK (0.1.39): connect to
``{ws_url}/text-to-speech/ws?model=bulbul:v3&send_completion_event=true`` with header
``api-subscription-key``; send ``{"type": "config", "data": {...}}`` (speaker,
``target_language_code``, ``speech_sample_rate``, ``output_audio_codec: "linear16"``; no
``pitch``/``loudness``, which bulbul:v3 ignores), then
``{"type": "text", "data": {"text": …}}`` messages of at most 2500 characters and
``{"type": "flush"}``; Sarvam answers with ``{"type": "audio", "data": {"audio": <base64 PCM>}}``
chunks and ``{"type": "event", "data": {"event_type": "final"}}`` once the flushed text is spoken.

The language key is ``target_language_code``, the name Sarvam's documentation gives the field
(the voice-cloning socket, documented as the same wire protocol, requires it by that name); the
SDK's ``configure()`` puts ``language_code`` on the wire instead. Sarvam's servers are not
reachable from here to say which one they take, so the loopback fake accepts both and
``docs/providers.md`` keeps the record.

Text is forwarded a sentence at a time while the LLM is still writing, so the first audio
arrives before the reply is complete. Every character pushed is sent (whitespace rides along
with the sentence it follows), so livekit's ``characters_count`` metric equals what Sarvam
bills. Sockets are pooled and reused between turns to save the handshake on each reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APITimeoutError,
    tts,
    utils,
)

from agent_worker.providers.sarvam_socket import DEFAULT_WS_URL, SarvamSocket, body
from agent_worker.providers.sentences import SOFT_CHUNK_CHARS, take_ready_text

logger = logging.getLogger(__name__)

PROVIDER = "sarvam"
MAX_TEXT_CHARS = 2500  # Sarvam's limit per text message
SAMPLE_RATES = (8000, 16000, 22050, 24000)
# Sarvam starts synthesising once this many characters are buffered (30 is its minimum).
_MIN_BUFFER_SIZE = 30
# Sarvam closes a socket after 60 s without traffic; retire pooled sockets well before that.
_POOL_MAX_IDLE_S = 40.0


@dataclass(frozen=True)
class _Options:
    voice: str
    language: str
    model: str
    sample_rate: int

    def path(self) -> str:
        # send_completion_event defaults to true; sent anyway, since the turn's end hangs on it.
        query = urlencode({"model": self.model, "send_completion_event": "true"})
        return f"/text-to-speech/ws?{query}"

    def config_message(self) -> str:
        data = {
            "target_language_code": self.language,
            "speaker": self.voice,
            "model": self.model,
            "speech_sample_rate": self.sample_rate,
            "output_audio_codec": "linear16",
            "min_buffer_size": _MIN_BUFFER_SIZE,
            "max_chunk_length": SOFT_CHUNK_CHARS,
        }
        return json.dumps({"type": "config", "data": data})


def split_for_sarvam(text: str) -> list[str]:
    """Split ``text`` into messages within Sarvam's size limit, at whitespace where possible,
    losing no characters."""
    pieces = []
    while len(text) > MAX_TEXT_CHARS:
        cut = text.rfind(" ", 0, MAX_TEXT_CHARS)
        cut = cut + 1 if cut > 0 else MAX_TEXT_CHARS
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


class SarvamTTS(tts.TTS):
    """Streaming Sarvam TTS producing 16-bit mono PCM at ``sample_rate``."""

    def __init__(
        self,
        *,
        api_key: str,
        voice: str,
        language: str,
        ws_url: str = DEFAULT_WS_URL,
        model: str = "bulbul:v3",
        sample_rate: int = 16000,
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"Sarvam TTS sample rate must be one of {SAMPLE_RATES}, not {sample_rate}")
        self._socket = SarvamSocket(api_key=api_key, ws_url=ws_url, label="TTS")
        super().__init__(capabilities=tts.TTSCapabilities(streaming=True), sample_rate=sample_rate, num_channels=1)
        self._opts = _Options(voice=voice, language=language, model=model, sample_rate=sample_rate)
        self._pool = utils.ConnectionPool[aiohttp.ClientWebSocketResponse](
            connect_cb=self._connect,
            close_cb=self._close,
            max_session_duration=_POOL_MAX_IDLE_S,
            mark_refreshed_on_get=True,
        )

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return PROVIDER

    async def _connect(self, connect_timeout: float) -> aiohttp.ClientWebSocketResponse:
        return await self._socket.connect(self._opts.path(), connect_timeout)

    @staticmethod
    async def _close(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.close()

    def prewarm(self) -> None:
        self._pool.prewarm()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SarvamSynthesizeStream:
        return SarvamSynthesizeStream(tts=self, conn_options=conn_options)

    async def aclose(self) -> None:
        await self._pool.aclose()
        await self._socket.aclose()


class SarvamSynthesizeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: SarvamTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._sarvam = tts
        self._opts = tts._opts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._opts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        async with self._sarvam._pool.connection(timeout=self._conn_options.timeout) as ws:
            self._acquire_time = self._sarvam._pool.last_acquire_time
            self._connection_reused = self._sarvam._pool.last_connection_reused
            await self._sarvam._socket.send(ws, self._opts.config_message())
            exchange = _Exchange(ws=ws, emitter=output_emitter)
            sender = asyncio.create_task(self._send_text(exchange), name="SarvamTTS.send")
            receiver = asyncio.create_task(self._receive(exchange), name="SarvamTTS.receive")
            try:
                await self._wait(exchange, sender, receiver)
            finally:
                if not receiver.done():
                    # Cancelling a pending receive leaves aiohttp's socket unusable: never pool it.
                    self._sarvam._pool.remove(ws)
                await utils.aio.cancel_and_wait(sender, receiver)

    async def _wait(self, exchange: _Exchange, sender: asyncio.Task[None], receiver: asyncio.Task[None]) -> None:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:
            receiver.result()
            if not sender.done():
                raise APIConnectionError("Sarvam TTS stopped answering before the text was sent")
        sender.result()
        # All text is sent: wait for its audio, failing if Sarvam goes quiet for too long.
        while exchange.finals_received < exchange.flushes_sent and not receiver.done():
            await asyncio.wait({receiver}, timeout=self._conn_options.timeout)
            if not receiver.done() and time.monotonic() - exchange.last_message_at > self._conn_options.timeout:
                raise APITimeoutError("Sarvam TTS stopped sending audio")
        if receiver.done():
            receiver.result()

    async def _send_text(self, exchange: _Exchange) -> None:
        buffer = ""
        async for item in self._input_ch:
            if isinstance(item, str):
                buffer += item
                ready, buffer = take_ready_text(buffer)
                if ready:
                    await self._send_chunk(exchange, ready)
                continue
            # flush: speak everything buffered now
            if buffer.strip():
                await self._send_chunk(exchange, buffer)
            buffer = ""
            if exchange.text_since_flush:
                exchange.text_since_flush = False
                exchange.flushes_sent += 1
                await self._sarvam._socket.send(exchange.ws, json.dumps({"type": "flush"}))
        exchange.input_done = True

    async def _send_chunk(self, exchange: _Exchange, text: str) -> None:
        if not exchange.segment_started:
            exchange.segment_started = True
            exchange.emitter.start_segment(segment_id=utils.shortuuid())
            self._mark_started()
        for piece in split_for_sarvam(text):
            await self._sarvam._socket.send(exchange.ws, json.dumps({"type": "text", "data": {"text": piece}}))
        exchange.text_since_flush = True

    async def _receive(self, exchange: _Exchange) -> None:
        ws = exchange.ws
        while not (exchange.input_done and exchange.finals_received >= exchange.flushes_sent):
            data = await self._sarvam._socket.receive(ws)
            exchange.last_message_at = time.monotonic()
            if data is None:
                raise self._sarvam._socket.closed(ws)
            kind = data.get("type")
            if kind == "audio":
                audio = _decode_audio(body(data))
                if audio and exchange.segment_started:
                    exchange.emitter.push(audio)
            elif kind == "event" and body(data).get("event_type") == "final":
                exchange.finals_received += 1


@dataclass
class _Exchange:
    """State shared by the send and receive halves of one synthesis on one socket."""

    ws: aiohttp.ClientWebSocketResponse
    emitter: tts.AudioEmitter
    segment_started: bool = False
    text_since_flush: bool = False
    input_done: bool = False
    flushes_sent: int = 0
    finals_received: int = 0
    last_message_at: float = 0.0

    def __post_init__(self) -> None:
        self.last_message_at = time.monotonic()


def _decode_audio(body: dict[str, Any]) -> bytes:
    encoded = body.get("audio")
    if not isinstance(encoded, str):
        return b""
    with contextlib.suppress(binascii.Error, ValueError):
        return base64.b64decode(encoded, validate=True)
    logger.warning("ignored an undecodable audio chunk from Sarvam TTS")
    return b""
