"""A loopback fake of Sarvam's streaming STT and TTS WebSockets and its chat completions.

One aiohttp server on ``127.0.0.1`` (own thread and loop) speaks the wire protocol of

* ``GET /speech-to-text/ws`` — query ``language-code``, ``model``, ``mode``, ``vad_signals``,
  ``high_vad_sensitivity``, ``flush_signal``, ``sample_rate``, ``input_audio_codec``; client sends
  ``{"audio": {"data", "sample_rate", "encoding"}}`` and ``{"type": "flush"}``; server sends
  ``{"type": "events", "data": {"signal_type": "START_SPEECH" | "END_SPEECH", …}}`` and
  ``{"type": "data", "data": {"transcript", "language_code", "metrics": {"audio_duration", …}, …}}``;
* ``GET /text-to-speech/ws?model=…&send_completion_event=…`` — client sends ``config``,
  ``text`` (1–2500 characters), ``flush`` and ``ping``; server sends base64 ``audio`` chunks and
  ``{"type": "event", "data": {"event_type": "final"}}`` after each flush unless
  ``send_completion_event=false`` (the documented default is true);
* ``POST /v1/chat/completions`` — OpenAI-compatible, see ``ChatCompletions``.

The rules come from Sarvam's API reference and the official ``sarvamai`` SDK (0.1.39), not from
our clients; ``testsupport/tests/test_sarvam_sdk_contract.py`` drives this fake with that SDK.
Where the two disagree the fake accepts both: the TTS config's language as
``target_language_code`` (the docs' name) or ``language_code`` (what the SDK's ``configure()``
puts on the wire); ``pitch``/``loudness``, which the SDK always sends and bulbul:v3 ignores.

It checks what clients send (the ``api-subscription-key`` header, model, language, speaker,
sample rates, message shapes, the text size limit). A violation is recorded in ``violations``
and answered with an error frame, as the real service does, so tests assert ``violations == []``.

Usage::

    async with FakeSarvam(api_key="sk") as sarvam:      # or: with FakeSarvam() as sarvam
        sarvam.script_transcripts("hello there", "what is the weather")
        stt = SarvamSTT(api_key="sk", language="en-IN", ws_url=sarvam.ws_url)
        tts = SarvamTTS(api_key="sk", voice="shubh", language="en-IN", ws_url=sarvam.ws_url)
        llm base URL: sarvam.chat_base_url  (records in sarvam.chat)

STT behaviour: received PCM is cut into 20 ms frames; a frame whose RMS exceeds
``speech_rms_threshold`` is speech. The first speech frame sends START_SPEECH; after the
end-of-speech silence END_SPEECH is sent, then (after ``transcript_delay_s``) the next scripted
transcript (``default_transcript`` when the script is empty). The silence is what Sarvam
documents, 1 s (``DEFAULT_END_SILENCE_MS``), or 0.5 s with ``high_vad_sensitivity=true``
(``HIGH_VAD_END_SILENCE_MS``); ``end_silence_ms`` overrides both for tests that only need turns
to end, never for latency figures. ``{"type": "flush"}`` ends an utterance in progress at once.

TTS behaviour: text is buffered and synthesised once ``min_buffer_size`` characters (from the
config, default 50) have arrived, and on flush. Audio is a deterministic 440 Hz tone of
``tts_ms_per_char`` ms per character at the configured ``speech_sample_rate`` (24000 when
omitted, the documented bulbul:v3 default), sent in ``tts_chunk_ms`` chunks as raw PCM
(``linear16``), WAV or MP3 (the codec the SDK asks for by default).

Records: ``stt_connections`` / ``tts_connections`` (query and headers), ``stt_audio_seconds``,
``stt_utterances`` (transcripts sent), ``tts_configs``, ``tts_texts`` (``(monotonic time, text)``),
``tts_characters``, ``tts_audio_seconds``, ``tts_first_audio_at`` (monotonic times), ``violations``.

Faults and latency (set before connecting; ``*_next`` apply once per connection attempt):
``fail_next_connect("stt" | "tts", status, times=, retry_after=)`` answers the handshake with an
HTTP error (429, 5xx…); ``drop_stt_after_audio_messages`` / ``drop_tts_after_audio_chunks`` cut
the next connection mid-stream without a close frame; ``malformed_stt_frame`` /
``malformed_tts_frame`` send one non-JSON frame on the next connection;
``transcript_delay_s``, ``first_audio_delay_s``, ``handshake_delay_s`` slow the service down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import math
import time
import uuid
import wave
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import av
import numpy as np
from aiohttp import WSMsgType, web

from testsupport.fakes._loopback import LoopbackServer
from testsupport.fakes.openai_chat import AuthCheck, ChatCompletions

STT_MODELS = frozenset({"saaras:v3", "saaras:v4"})  # sarvamai 0.1.39 SpeechToTextStreamingModel
STT_MODES = frozenset({"transcribe", "translate", "verbatim", "translit", "codemix"})
STT_LANGUAGES = frozenset(
    {"unknown", "hi-IN", "bn-IN", "gu-IN", "kn-IN", "ml-IN", "mr-IN", "od-IN", "pa-IN", "ta-IN", "te-IN", "en-IN"}
    | {"as-IN", "ur-IN", "ne-IN", "kok-IN", "ks-IN", "sd-IN", "sa-IN", "sat-IN", "mni-IN", "brx-IN", "mai-IN", "doi-IN"}
)
STT_SAMPLE_RATES = frozenset({8000, 16000})
# Per-message audio.sample_rate: "Supported values: 16kHz (preferred), 22.05kHz, 24kHz"; "8kHz is
# only supported via connection parameter, not in AudioData messages" (sarvamai AudioData).
STT_MESSAGE_SAMPLE_RATES = frozenset({16000, 22050, 24000})
# "~1 s" of silence ends an utterance; "0.5 s with high VAD sensitivity" (Sarvam's STT docs).
DEFAULT_END_SILENCE_MS = 1000.0
HIGH_VAD_END_SILENCE_MS = 500.0
STT_PCM_CODECS = frozenset({"pcm_s16le", "pcm_l16", "pcm_raw"})
TTS_MODELS = frozenset({"bulbul:v3"})
TTS_LANGUAGES = frozenset(
    {"bn-IN", "en-IN", "gu-IN", "hi-IN", "kn-IN", "ml-IN", "mr-IN", "od-IN", "pa-IN", "ta-IN", "te-IN"}
)
TTS_V3_SPEAKERS = frozenset(
    [
        "shubh",
        "aditya",
        "ritu",
        "priya",
        "neha",
        "rahul",
        "pooja",
        "rohan",
        "simran",
        "kavya",
        "amit",
        "dev",
        "ishita",
        "shreya",
        "ratan",
        "varun",
        "manan",
        "sumit",
        "roopa",
        "kabir",
        "aayan",
        "ashutosh",
        "advait",
        "anand",
        "tanya",
        "tarun",
        "sunny",
        "mani",
        "gokul",
        "vijay",
        "shruti",
        "suhani",
        "mohit",
        "kavitha",
        "rehan",
        "soham",
        "rupali",
        "amelia",
        "sophia",
    ]
)
TTS_SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000})
# API reference, text-to-speech/ws: "bulbul:v3 … Default sample rate: 24000 Hz" (the SDK's
# docstrings say 22050; its configure() always sends a rate, so it never meets this default).
TTS_DEFAULT_SAMPLE_RATE = 24000
# Documented codecs; the fake synthesises these three and refuses the others as out of its reach.
TTS_CODECS = frozenset({"linear16", "mulaw", "alaw", "opus", "flac", "aac", "wav", "mp3"})
TTS_FAKE_CODECS = {"linear16": "audio/pcm", "wav": "audio/wav", "mp3": "audio/mpeg"}
TTS_DEFAULT_CODEC = "mp3"  # "currently supports MP3 only" (streaming guide); the SDK's default
TTS_BITRATES = frozenset({"32k", "64k", "96k", "128k", "192k"})
TTS_MAX_TEXT_CHARS = 2500
# What POST /v1/chat/completions serves, per Sarvam's Chat Completion V1 reference.
SARVAM_CHAT_MODELS = frozenset({"sarvam-105b", "sarvam-105b-conversations"})

Service = Literal["stt", "tts"]


@dataclass(frozen=True)
class Connection:
    service: Service
    query: Mapping[str, str]
    headers: Mapping[str, str]
    connected_at: float


@dataclass(frozen=True)
class _ConnectFailure:
    status: int
    retry_after: float | None


def tone(duration_s: float, sample_rate: int, *, frequency: float = 440.0, amplitude: int = 8000) -> bytes:
    """Deterministic s16le mono PCM; also handy for tests that need "speech" to feed the STT."""
    # numpy, not a Python loop: the TTS fake makes each reply's audio before its first chunk, and
    # a benchmark would count that time as the pipeline's (bench/README.md, pipeline_overhead).
    step = 2 * math.pi * frequency / sample_rate
    wave = amplitude * np.sin(step * np.arange(round(duration_s * sample_rate)))
    return wave.astype("<i2").tobytes()


def silence(duration_s: float, sample_rate: int) -> bytes:
    return b"\x00\x00" * round(duration_s * sample_rate)


def encode(pcm: bytes, sample_rate: int, codec: str, bitrate: str = "128k") -> bytes:
    """``pcm`` (s16le mono) in one of ``TTS_FAKE_CODECS``, as a whole file."""
    if codec == "linear16":
        return pcm
    out = io.BytesIO()
    if codec == "wav":
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm)
        return out.getvalue()
    # No ID3 tag or Xing header: a stream of several replies is then one valid MP3 stream.
    with av.open(out, "w", format="mp3", options={"id3v2_version": "0", "write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        stream.bit_rate = int(bitrate.removesuffix("k")) * 1000
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def _rms(pcm: bytes) -> float:
    count = len(pcm) // 2
    if not count:
        return 0.0
    samples = np.frombuffer(pcm, dtype="<i2", count=count).astype(np.float64)
    return math.sqrt(float(np.dot(samples, samples)) / count)


@dataclass
class _SttState:
    sample_rate: int
    language: str
    end_silence_ms: float
    speaking: bool = False
    silence_ms: float = 0.0
    utterance_seconds: float = 0.0
    pending: bytes = b""


class FakeSarvam:
    """See the module docstring for the protocol, records and faults."""

    def __init__(
        self,
        *,
        api_key: str = "test-sarvam-key",
        end_silence_ms: float | None = None,
        speech_rms_threshold: float = 500.0,
        default_transcript: str = "",
        tts_ms_per_char: float = 20.0,
        tts_chunk_ms: float = 100.0,
    ) -> None:
        self.api_key = api_key
        self._configured = (end_silence_ms, speech_rms_threshold, default_transcript, tts_ms_per_char, tts_chunk_ms)
        self.chat = ChatCompletions(auth=self._chat_auth(), allowed_models=SARVAM_CHAT_MODELS)
        self.reset()
        self._server = LoopbackServer(self._app)

    def reset(self) -> None:
        """Back to the state the constructor left: its settings, no scripts, faults, latency or
        records; the server and its port stay, so one fake can serve many tests."""
        (
            self.end_silence_ms,
            self.speech_rms_threshold,
            self.default_transcript,
            self.tts_ms_per_char,
            self.tts_chunk_ms,
        ) = self._configured
        # latency
        self.handshake_delay_s = 0.0
        self.transcript_delay_s = 0.0
        self.first_audio_delay_s = 0.0
        # faults
        self.drop_stt_after_audio_messages: int | None = None
        self.drop_tts_after_audio_chunks: int | None = None
        self.malformed_stt_frame = False
        self.malformed_tts_frame = False
        self._connect_failures: dict[Service, deque[_ConnectFailure]] = {"stt": deque(), "tts": deque()}
        # records
        self.violations: list[str] = []
        self.stt_connections: list[Connection] = []
        self.tts_connections: list[Connection] = []
        self.stt_audio_seconds = 0.0
        self.stt_utterances: list[str] = []
        self.stt_vad_signals: list[str] = []
        self.tts_configs: list[dict[str, Any]] = []
        self.tts_texts: list[tuple[float, str]] = []
        self.tts_characters = 0
        self.tts_audio_seconds = 0.0
        self.tts_first_audio_at: list[float] = []
        self.tts_flushes = 0
        self._transcripts: deque[str] = deque()
        self.chat.reset()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._server.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The fake's own event loop, for probes that must run where its handlers run."""
        return self._server.loop

    @property
    def chat_base_url(self) -> str:
        return self.http_url + "/v1"

    def start(self) -> FakeSarvam:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeSarvam:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeSarvam:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # --- scripting and faults ----------------------------------------------------------------

    def script_transcripts(self, *transcripts: str) -> None:
        self._transcripts.extend(transcripts)

    def fail_next_connect(
        self, service: Service, status: int, *, times: int = 1, retry_after: float | None = None
    ) -> None:
        self._connect_failures[service].extend(_ConnectFailure(status, retry_after) for _ in range(times))

    # --- routing -----------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/speech-to-text/ws", self._stt)
        app.router.add_get("/text-to-speech/ws", self._tts)
        app.router.add_post("/v1/chat/completions", self.chat.handle)
        return app

    def _chat_auth(self) -> AuthCheck:
        def check(headers: Mapping[str, str]) -> str | None:
            if (
                headers.get("api-subscription-key") == self.api_key
                or headers.get("Authorization") == f"Bearer {self.api_key}"
            ):
                return None
            return "Invalid API subscription key"

        return check

    def _violation(self, message: str) -> str:
        self.violations.append(message)
        return message

    async def _handshake(self, http: web.Request, service: Service) -> web.WebSocketResponse | web.Response:
        if self.handshake_delay_s:
            await asyncio.sleep(self.handshake_delay_s)
        failures = self._connect_failures[service]
        if failures:
            failure = failures.popleft()
            headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            return web.json_response(
                {"error": {"message": f"injected {failure.status}", "code": "injected"}},
                status=failure.status,
                headers=headers,
            )
        if http.headers.get("api-subscription-key") != self.api_key:
            return web.json_response(
                {"error": {"message": "Invalid API subscription key", "code": "invalid_api_key_error"}}, status=403
            )
        ws = web.WebSocketResponse()
        await ws.prepare(http)
        record = Connection(
            service=service, query=dict(http.query), headers=dict(http.headers), connected_at=time.monotonic()
        )
        (self.stt_connections if service == "stt" else self.tts_connections).append(record)
        return ws

    # --- speech to text ----------------------------------------------------------------------

    async def _stt(self, http: web.Request) -> web.StreamResponse:
        ws = await self._handshake(http, "stt")
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        with contextlib.suppress(ConnectionResetError):
            await self._stt_session(http, ws)
        return ws

    async def _stt_session(self, http: web.Request, ws: web.WebSocketResponse) -> None:
        query = http.query
        problem = self._check_stt_query(query)
        if problem is not None:
            await self._stt_error(ws, problem)
            await ws.close(code=1008)
            return
        if self.end_silence_ms is not None:
            end_silence_ms = self.end_silence_ms
        elif query.get("high_vad_sensitivity") == "true":
            end_silence_ms = HIGH_VAD_END_SILENCE_MS
        else:
            end_silence_ms = DEFAULT_END_SILENCE_MS
        state = _SttState(
            sample_rate=int(query.get("sample_rate", "16000")),
            language=query["language-code"],
            end_silence_ms=end_silence_ms,
        )
        drop_after = self.drop_stt_after_audio_messages
        self.drop_stt_after_audio_messages = None
        malformed = self.malformed_stt_frame
        self.malformed_stt_frame = False
        vad_signals = query.get("vad_signals") == "true"
        audio_messages = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                await self._stt_error(ws, self._violation(f"stt: unexpected frame type {msg.type!r}"))
                continue
            try:
                payload = json.loads(msg.data)
            except json.JSONDecodeError:
                await self._stt_error(ws, self._violation("stt: frame is not JSON"))
                continue
            if not isinstance(payload, dict):
                await self._stt_error(ws, self._violation("stt: frame is not a JSON object"))
                continue
            if payload.get("type") == "flush":
                if query.get("flush_signal") != "true":
                    self._violation("stt: flush sent without flush_signal=true")
                if state.speaking:
                    await self._end_utterance(ws, state, vad_signals)
                continue
            if "audio" not in payload:
                await self._stt_error(ws, self._violation(f"stt: unknown message {sorted(payload)}"))
                continue
            pcm = self._check_audio(payload["audio"], state)
            if pcm is None:
                await self._stt_error(ws, "invalid audio message")
                continue
            audio_messages += 1
            if malformed and audio_messages == 1:
                await ws.send_str("{this is not json")
            if drop_after is not None and audio_messages > drop_after:
                self._abort(http)
                return
            self.stt_audio_seconds += len(pcm) / 2 / state.sample_rate
            await self._detect_speech(ws, state, pcm, vad_signals)
        return

    @staticmethod
    def _abort(http: web.Request) -> None:
        if http.transport is not None:
            http.transport.abort()

    def _check_stt_query(self, query: Mapping[str, str]) -> str | None:
        if query.get("language-code") not in STT_LANGUAGES:
            return self._violation(f"stt: unsupported language-code {query.get('language-code')!r}")
        if query.get("model", "saaras:v3") not in STT_MODELS:
            return self._violation(f"stt: unsupported model {query.get('model')!r}")
        if query.get("mode", "transcribe") not in STT_MODES:
            return self._violation(f"stt: unsupported mode {query.get('mode')!r}")
        for flag in ("vad_signals", "flush_signal", "high_vad_sensitivity"):
            if query.get(flag, "false") not in ("true", "false"):
                return self._violation(f"stt: {flag} must be true or false, got {query.get(flag)!r}")
        rate = query.get("sample_rate", "16000")
        if not rate.isdigit() or int(rate) not in STT_SAMPLE_RATES:
            return self._violation(f"stt: unsupported sample_rate {rate!r}")
        codec = query.get("input_audio_codec")
        if codec is not None and codec not in STT_PCM_CODECS | {"wav"}:
            return self._violation(f"stt: unsupported input_audio_codec {codec!r}")
        return None

    def _check_audio(self, audio: Any, state: _SttState) -> bytes | None:
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            self._violation("stt: audio message needs audio.data")
            return None
        rate = audio.get("sample_rate")
        if rate is not None and rate not in STT_MESSAGE_SAMPLE_RATES:
            self._violation(f"stt: audio.sample_rate {rate!r} is not supported in a message (8 kHz: connection only)")
            return None
        if rate is not None and rate != state.sample_rate:
            self._violation(f"stt: audio.sample_rate {rate!r} != connection {state.sample_rate}")
            return None
        if audio.get("encoding", "audio/wav") != "audio/wav":
            self._violation(f"stt: audio.encoding {audio.get('encoding')!r}")
            return None
        try:
            pcm = base64.b64decode(audio["data"], validate=True)
        except (binascii.Error, ValueError):
            self._violation("stt: audio.data is not base64")
            return None
        if len(pcm) % 2:
            self._violation("stt: odd number of PCM bytes")
            return None
        return pcm

    async def _detect_speech(self, ws: web.WebSocketResponse, state: _SttState, pcm: bytes, vad_signals: bool) -> None:
        state.pending += pcm
        frame_bytes = state.sample_rate // 50 * 2  # 20 ms
        while len(state.pending) >= frame_bytes:
            frame, state.pending = state.pending[:frame_bytes], state.pending[frame_bytes:]
            is_speech = _rms(frame) > self.speech_rms_threshold
            if state.speaking:
                state.utterance_seconds += 0.02
            if is_speech:
                state.silence_ms = 0.0
                if not state.speaking:
                    state.speaking = True
                    state.utterance_seconds = 0.02
                    await self._vad(ws, "START_SPEECH", vad_signals)
            elif state.speaking:
                state.silence_ms += 20.0
                if state.silence_ms >= state.end_silence_ms:
                    await self._end_utterance(ws, state, vad_signals)

    async def _vad(self, ws: web.WebSocketResponse, signal: str, vad_signals: bool) -> None:
        self.stt_vad_signals.append(signal)
        if not vad_signals:
            return
        await ws.send_json(
            {
                "type": "events",
                "data": {
                    "event_type": "vad",
                    "signal_type": signal,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "occured_at": time.time(),
                },
            }
        )

    async def _end_utterance(self, ws: web.WebSocketResponse, state: _SttState, vad_signals: bool) -> None:
        state.speaking = False
        state.silence_ms = 0.0
        await self._vad(ws, "END_SPEECH", vad_signals)
        transcript = self._transcripts.popleft() if self._transcripts else self.default_transcript
        if self.transcript_delay_s:
            await asyncio.sleep(self.transcript_delay_s)
        self.stt_utterances.append(transcript)
        language = "en-IN" if state.language == "unknown" else state.language
        await ws.send_json(
            {
                "type": "data",
                "data": {
                    "request_id": uuid.uuid4().hex,
                    "transcript": transcript,
                    "timestamps": None,
                    "diarized_transcript": None,
                    "language_code": language,
                    "language_probability": 0.98 if state.language == "unknown" else None,
                    "metrics": {"audio_duration": round(state.utterance_seconds, 3), "processing_latency": 0.05},
                },
            }
        )

    @staticmethod
    async def _stt_error(ws: web.WebSocketResponse, message: str) -> None:
        if not ws.closed:
            await ws.send_json({"type": "error", "data": {"error": message, "code": "invalid_request_error"}})

    # --- text to speech ----------------------------------------------------------------------

    async def _tts(self, http: web.Request) -> web.StreamResponse:
        ws = await self._handshake(http, "tts")
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        with contextlib.suppress(ConnectionResetError):
            await self._tts_session(http, ws)
        return ws

    async def _tts_session(self, http: web.Request, ws: web.WebSocketResponse) -> None:
        if http.query.get("model", "bulbul:v3") not in TTS_MODELS:
            await self._tts_error(ws, self._violation(f"tts: unsupported model {http.query.get('model')!r}"), 400)
            await ws.close(code=1008)
            return
        completion_event = http.query.get("send_completion_event", "true") != "false"
        drop_after = self.drop_tts_after_audio_chunks
        self.drop_tts_after_audio_chunks = None
        malformed = self.malformed_tts_frame
        self.malformed_tts_frame = False
        config: dict[str, Any] | None = None
        buffer = ""
        chunks_sent = 0
        first_audio_sent = False

        async def synthesize(text: str) -> bool:
            """Send the audio for ``text``; False when the connection was dropped on purpose."""
            nonlocal chunks_sent, first_audio_sent, malformed
            assert config is not None
            rate = int(config.get("speech_sample_rate", TTS_DEFAULT_SAMPLE_RATE))
            codec = str(config.get("output_audio_codec", TTS_DEFAULT_CODEC))
            if not first_audio_sent and self.first_audio_delay_s:
                await asyncio.sleep(self.first_audio_delay_s)
            pcm = tone(len(text) * self.tts_ms_per_char / 1000, rate)
            audio = encode(pcm, rate, codec, str(config.get("output_audio_bitrate", "128k")))
            # Chunks carry tts_chunk_ms of audio each; an encoded file is cut into as many pieces.
            pcm_step = max(2, int(rate * self.tts_chunk_ms / 1000) * 2)
            pieces = max(1, math.ceil(len(pcm) / pcm_step))
            step = max(1, math.ceil(len(audio) / pieces))
            for index, start in enumerate(range(0, len(audio), step)):
                if drop_after is not None and chunks_sent >= drop_after:
                    self._abort(http)
                    return False
                if malformed:
                    malformed = False
                    await ws.send_str('{"type": "audio", "data": ')
                piece = audio[start : start + step]
                await ws.send_json(
                    {
                        "type": "audio",
                        "data": {
                            "content_type": TTS_FAKE_CODECS[codec],
                            "audio": base64.b64encode(piece).decode(),
                            "request_id": "fake",
                        },
                    }
                )
                if not first_audio_sent:
                    first_audio_sent = True
                    self.tts_first_audio_at.append(time.monotonic())
                chunks_sent += 1
                seconds_before = min(len(pcm), index * pcm_step) / 2 / rate
                self.tts_audio_seconds += min(len(pcm), (index + 1) * pcm_step) / 2 / rate - seconds_before
            return True

        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                await self._tts_error(ws, self._violation(f"tts: unexpected frame type {msg.type!r}"), 400)
                continue
            try:
                payload = json.loads(msg.data)
            except json.JSONDecodeError:
                await self._tts_error(ws, self._violation("tts: frame is not JSON"), 400)
                continue
            kind = payload.get("type") if isinstance(payload, dict) else None
            data = payload.get("data") if isinstance(payload, dict) else None
            if kind == "ping":
                continue
            if kind == "config":
                problem = self._check_tts_config(data)
                if problem is not None:
                    await self._tts_error(ws, problem, 422)
                    continue
                assert isinstance(data, dict)
                # "any text currently in the buffer will be automatically flushed and processed
                # before applying the new configuration" (sarvamai ConfigureConnection)
                ready, buffer = buffer, ""
                if ready and not await synthesize(ready):
                    return
                config = data
                self.tts_configs.append(dict(data))
                continue
            if config is None:
                await self._tts_error(ws, self._violation(f"tts: {kind!r} before config"), 400)
                continue
            if kind == "text":
                text = data.get("text") if isinstance(data, dict) else None
                if not isinstance(text, str) or not 1 <= len(text) <= TTS_MAX_TEXT_CHARS:
                    size = len(text) if isinstance(text, str) else None
                    await self._tts_error(
                        ws, self._violation(f"tts: text must be 1-{TTS_MAX_TEXT_CHARS} characters, got {size}"), 422
                    )
                    continue
                self.tts_texts.append((time.monotonic(), text))
                self.tts_characters += len(text)
                buffer += text
                if len(buffer) >= int(config.get("min_buffer_size", 50)):
                    ready, buffer = buffer, ""
                    if not await synthesize(ready):
                        return
                continue
            if kind == "flush":
                self.tts_flushes += 1
                ready, buffer = buffer, ""
                if ready and not await synthesize(ready):
                    return
                if completion_event:
                    await ws.send_json(
                        {
                            "type": "event",
                            "data": {
                                "event_type": "final",
                                "message": "Generation complete",
                                "timestamp": datetime.now(UTC).isoformat(),
                            },
                        }
                    )
                continue
            await self._tts_error(ws, self._violation(f"tts: unknown message type {kind!r}"), 400)
        return

    def _check_tts_config(self, data: Any) -> str | None:
        if not isinstance(data, dict):
            return self._violation("tts: config.data must be an object")
        # The docs name the field target_language_code; the SDK's configure() sends language_code.
        languages = [data[k] for k in ("target_language_code", "language_code") if k in data]
        if not languages or any(other != languages[0] for other in languages):
            return self._violation(f"tts: config needs one target_language_code (or language_code), got {languages}")
        language = languages[0]
        if not isinstance(language, str) or language not in TTS_LANGUAGES:
            return self._violation(f"tts: unsupported target_language_code {language!r}")
        if data.get("model", "bulbul:v3") not in TTS_MODELS:
            return self._violation(f"tts: unsupported model {data.get('model')!r}")
        if data.get("speaker") not in TTS_V3_SPEAKERS:
            return self._violation(f"tts: unknown speaker {data.get('speaker')!r} for bulbul:v3")
        # Pipecat's SarvamTTSService (1.14) sends the rate as a decimal string, the SDK as a number;
        # both are taken so that bench.peers can run Pipecat against this fake (whether Sarvam's
        # service takes the string cannot be checked from here: bench/peers/README.md).
        rate = data.get("speech_sample_rate", TTS_DEFAULT_SAMPLE_RATE)
        if isinstance(rate, str) and rate.isdigit():
            rate = int(rate)
        if rate not in TTS_SAMPLE_RATES:
            return self._violation(f"tts: unsupported speech_sample_rate {data.get('speech_sample_rate')!r}")
        codec = data.get("output_audio_codec", TTS_DEFAULT_CODEC)
        if codec not in TTS_CODECS:
            return self._violation(f"tts: unsupported output_audio_codec {codec!r}")
        if codec not in TTS_FAKE_CODECS:
            return self._violation(f"tts: the fake synthesises {sorted(TTS_FAKE_CODECS)} only, not {codec!r}")
        if data.get("output_audio_bitrate", "128k") not in TTS_BITRATES:
            return self._violation(f"tts: unsupported output_audio_bitrate {data.get('output_audio_bitrate')!r}")
        # pitch and loudness: "NOT supported for bulbul:v3 … Will be ignored if provided" (SDK),
        # and its configure() always sends them, so they are accepted and ignored.
        for field, low, high in (("pace", 0.5, 2.0), ("temperature", 0.01, 1.0), ("min_buffer_size", 1, 2500)):
            value = data.get(field)
            if value is not None and (not isinstance(value, int | float) or not low <= value <= high):
                return self._violation(f"tts: {field} must be within {low}-{high} for bulbul:v3, got {value!r}")
        return None

    @staticmethod
    async def _tts_error(ws: web.WebSocketResponse, message: str, code: int) -> None:
        if not ws.closed:
            await ws.send_json({"type": "error", "data": {"message": message, "code": code}})
