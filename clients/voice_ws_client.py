"""Command-line client for the legacy PCM WebSocket (``/ws/voice-agent``).

Streams a WAV file (any sample rate, channel count or sample width: converted to mono s16le at
``--sample-rate``) or the microphone in real time, prints the transcripts as they arrive and
saves what the agent said to a WAV file::

    .venv/bin/python -m clients.voice_ws_client --key cm_… --wav question.wav --out agent.wav
    .venv/bin/python -m clients.voice_ws_client --key cm_… --say "Book a table for two" --out agent.wav
    .venv/bin/python -m clients.voice_ws_client --key cm_… --mic --speaker   # Ctrl-C ends the call

One of ``--wav``, ``--say`` or ``--mic`` is required. ``--say`` speaks the text with the project's
offline piper voice (no network), handy for a demo. ``--mic`` and ``--speaker`` need the
``sounddevice`` package and the PortAudio library (``pip install sounddevice``; Debian's
``libportaudio2``), checked before a session is opened. ``--url`` (or ``CALLMISSED_WS_URL``) names
the server's socket, e.g. ``ws://127.0.0.1:8915/ws/voice-agent`` for ``make run PORT=8915``.

With ``--wav`` (or ``--say``) it streams silence until the agent has finished its greeting, then the file, then
silence until the agent has answered (at least ``--tail`` seconds), and then sends ``end``. It
exits when the server sends ``session.ended``: status 0 when the session ended normally, 1 when
it failed or was refused, 2 on bad arguments; every failure is one line on stderr. The protocol is
docs/legacy-websocket.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

DEFAULT_URL = "ws://127.0.0.1:8000/ws/voice-agent"
SUPPORTED_SAMPLE_RATES = (8000, 16000, 24000)
CHUNK_MS = 20
# How long to wait for the greeting before streaming the file anyway.
GREETING_WAIT_SECONDS = 20.0
# How long, at most, to wait for the agent's answer after the file before sending end.
ANSWER_WAIT_SECONDS = 60.0


# ------------------------------------------------------------------------------ audio conversion


def to_mono_float(raw: bytes, *, sample_width: int, channels: int) -> np.ndarray:
    """PCM bytes as WAV stores them → mono float64 in [-1, 1]."""
    if sample_width == 1:  # unsigned 8-bit
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif sample_width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif sample_width == 3:  # 24-bit little-endian: widen to 32 bits
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        samples = values.astype(np.float64) / float(1 << 23)
    elif sample_width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)
    else:
        raise ValueError(f"Unsupported WAV sample width: {sample_width} bytes")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples


def resample(samples: np.ndarray, *, from_rate: int, to_rate: int) -> np.ndarray:
    """Linear-interpolation resampling; a moving average first when downsampling, so speech
    does not alias badly. Plenty for feeding speech recognition."""
    if from_rate == to_rate or len(samples) == 0:
        return samples
    if to_rate < from_rate:
        width = max(1, round(from_rate / to_rate))
        if width > 1:
            samples = np.convolve(samples, np.ones(width) / width, mode="same")
    duration = len(samples) / from_rate
    count = max(1, round(duration * to_rate))
    positions = np.arange(count) * (from_rate / to_rate)
    return np.interp(positions, np.arange(len(samples)), samples)


def to_s16le(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def read_wav_as_pcm(path: Path, *, sample_rate: int) -> bytes:
    """Any PCM WAV → mono s16le at ``sample_rate``."""
    with wave.open(str(path), "rb") as wav:
        if wav.getcomptype() != "NONE":
            raise ValueError(f"{path}: only uncompressed PCM WAV files are supported")
        raw = wav.readframes(wav.getnframes())
        samples = to_mono_float(raw, sample_width=wav.getsampwidth(), channels=wav.getnchannels())
        return to_s16le(resample(samples, from_rate=wav.getframerate(), to_rate=sample_rate))


def synthesize_speech(text: str, *, sample_rate: int) -> bytes:
    """``text`` in the offline piper voice, mono s16le at ``sample_rate`` (the voice downloads once)."""
    try:
        from agent_worker.providers.offline.tts import VOICES
    except ImportError as error:
        raise SystemExit(f"--say needs the project's offline voice (piper): {error}") from None
    return VOICES.synthesize(text, sample_rate)


def write_wav(path: Path, pcm: bytes, *, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)


# ------------------------------------------------------------------------------ the call


@dataclass
class CallState:
    """What the server has told us so far."""

    session_id: str = ""
    agent_audio: bytearray = field(default_factory=bytearray)
    agent_speaking: bool = False
    agent_turns_finished: int = 0  # agent.stopped events seen
    ended: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None  # a fatal error before session.started
    close_code: int | None = None
    closed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, predicate: Callable[[], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=remaining)
        return True

    @property
    def over(self) -> bool:
        return self.ended is not None or self.closed


def show(event: dict[str, Any], out: Any = sys.stdout) -> None:
    """One line per event worth a human's attention."""
    kind = event.get("type")
    if kind == "transcript":
        who = "you" if event["role"] == "user" else "agent"
        mark = "" if event["final"] else " …"
        print(f"[{who}] {event['text']}{mark}", file=out, flush=True)
    elif kind == "session.started":
        print(
            f"session {event['session_id']} started ({event['sample_rate']} Hz, {event['providers']})",
            file=out,
            flush=True,
        )
    elif kind == "interrupted":
        print("(agent interrupted)", file=out, flush=True)
    elif kind == "error":
        level = "error" if event.get("fatal") else "warning"
        fields = f" {json.dumps(event['fields'])}" if event.get("fields") else ""
        print(f"{level}: {event['code']}: {event['message']}{fields}", file=sys.stderr, flush=True)
    elif kind == "session.ended":
        suffix = f": {event['error']}" if event.get("error") else ""
        print(f"session ended: {event['reason']} after {event['duration_seconds']:.1f} s{suffix}", file=out, flush=True)


async def receive(ws: ClientConnection, state: CallState, on_audio: Callable[[bytes], None] | None) -> None:
    try:
        async for message in ws:
            if isinstance(message, bytes):
                state.agent_audio.extend(message)
                if on_audio is not None:
                    on_audio(message)
            else:
                event = json.loads(message)
                show(event)
                kind = event.get("type")
                if kind == "session.started":
                    state.session_id = event["session_id"]
                elif kind == "agent.speaking":
                    state.agent_speaking = True
                elif kind == "agent.stopped":
                    state.agent_speaking = False
                    state.agent_turns_finished += 1
                elif kind == "session.ended":
                    state.ended = event
                elif kind == "error" and event.get("fatal") and not state.session_id:
                    state.refused = event
            state.changed.set()
    except ConnectionClosed:
        pass
    state.close_code = ws.close_code
    state.closed = True
    state.changed.set()


class Pacer:
    """Sends 20 ms chunks at the pace they play, from a clock that never drifts."""

    def __init__(self, ws: ClientConnection, sample_rate: int) -> None:
        self.ws = ws
        self.chunk_bytes = sample_rate * CHUNK_MS // 1000 * 2
        self.silence = b"\x00" * self.chunk_bytes
        self._next_at = time.monotonic()

    async def send(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), self.chunk_bytes):
            await self.ws.send(pcm[i : i + self.chunk_bytes])
            self._next_at += CHUNK_MS / 1000
            await asyncio.sleep(max(0.0, self._next_at - time.monotonic()))

    async def silence_until(self, state: CallState, predicate: Callable[[], bool], within: float) -> None:
        deadline = time.monotonic() + within
        while not predicate() and not state.over and time.monotonic() < deadline:
            await self.send(self.silence)


async def stream_wav(ws: ClientConnection, state: CallState, pcm: bytes, *, sample_rate: int, tail: float) -> None:
    pacer = Pacer(ws, sample_rate)
    # Let the agent greet first, as a caller would.
    await pacer.silence_until(state, lambda: state.agent_turns_finished >= 1, GREETING_WAIT_SECONDS)
    turns_before = state.agent_turns_finished
    await pacer.send(pcm)
    tail_until = time.monotonic() + tail
    # Silence after the file: the server hears the end of the utterance, and the agent answers.
    await pacer.silence_until(
        state,
        lambda: (
            time.monotonic() >= tail_until and state.agent_turns_finished > turns_before and not state.agent_speaking
        ),
        ANSWER_WAIT_SECONDS,
    )


# What each refusal close means, for a server that closed before saying why in an error event.
CLOSE_REASONS = {
    4001: "no API key was sent (--key or CALLMISSED_API_KEY)",
    4002: "the API key is not a valid CallMissed key",
    4003: "the API key was revoked or has expired",
    4402: "payment required: the balance or the monthly spend cap is used up",
    4429: "too many live sessions for this organization; try again shortly",
    4503: "the server cannot take a call right now; try again shortly",
}


def sound_device(flag: str, kind: str) -> Any:
    """``sounddevice`` with a default ``kind`` ("input" or "output") device, or exit with one line
    saying what is missing: checked before any session is opened."""
    try:
        import sounddevice  # type: ignore[import-untyped]
    except (ImportError, OSError) as error:
        raise SystemExit(
            f"error: {flag} needs the sounddevice package and the PortAudio library ({error}): "
            "pip install sounddevice, and apt-get install libportaudio2; or use --wav or --say"
        ) from None
    try:
        sounddevice.query_devices(kind=kind)
    except Exception as error:  # PortAudioError or ValueError, depending on the host's audio stack
        raise SystemExit(f"error: {flag}: no default {kind} device ({error})") from None
    return sounddevice


async def microphone_chunks(sample_rate: int) -> AsyncIterator[bytes]:
    """20 ms chunks from the default input device, through ``sounddevice`` (optional)."""
    sounddevice = sound_device("--mic", "input")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)

    def enqueue(chunk: bytes) -> None:
        if not queue.full():  # a stalled connection drops microphone audio rather than hoard it
            queue.put_nowait(chunk)

    def on_block(data: Any, frames: int, at: Any, status: Any) -> None:
        # PortAudio's thread: hand the block to the event loop.
        loop.call_soon_threadsafe(enqueue, bytes(data))

    blocksize = sample_rate * CHUNK_MS // 1000
    with sounddevice.RawInputStream(
        samplerate=sample_rate, channels=1, dtype="int16", blocksize=blocksize, callback=on_block
    ):
        while True:
            yield await queue.get()


def speaker(sample_rate: int) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """Plays the agent's audio as it arrives (``--speaker``); returns (play, close)."""
    sounddevice = sound_device("--speaker", "output")
    stream = sounddevice.RawOutputStream(samplerate=sample_rate, channels=1, dtype="int16")
    stream.start()

    def play(pcm: bytes) -> None:
        stream.write(pcm)

    def close() -> None:
        stream.stop()
        stream.close()

    return play, close


async def stream_microphone(ws: ClientConnection, state: CallState, *, sample_rate: int) -> None:
    print("Listening on the microphone; Ctrl-C ends the call.", file=sys.stderr, flush=True)
    async for chunk in microphone_chunks(sample_rate):
        if state.over:
            return
        await ws.send(chunk)


def config_from(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"type": "config", "sample_rate": args.sample_rate}
    for name in ("system_prompt", "voice", "language", "llm_model", "tts_provider", "max_duration_seconds"):
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    if args.metadata:
        config["metadata"] = json.loads(args.metadata)
    return config


async def run_call(args: argparse.Namespace) -> int:
    if args.wav:
        pcm = read_wav_as_pcm(Path(args.wav), sample_rate=args.sample_rate)
    elif args.say:
        pcm = await asyncio.to_thread(synthesize_speech, args.say, sample_rate=args.sample_rate)
    else:
        pcm = b""
        sound_device("--mic", "input")  # before the session, not after it has started
    state = CallState()
    play, close_speaker = speaker(args.sample_rate) if args.speaker else (None, None)
    url = f"{args.url}{'&' if '?' in args.url else '?'}key={args.key}"
    try:
        try:
            ws = await connect(url, max_size=None, open_timeout=15)
        except (OSError, WebSocketException) as error:
            detail = str(error).replace(args.key, "cm_…")  # a URL error would quote the key
            print(f"error: cannot open {args.url} ({detail}); is the server running?", file=sys.stderr)
            return 1
        async with ws:
            receiver = asyncio.create_task(receive(ws, state, play))
            with contextlib.suppress(ConnectionClosed):  # a refused key is closed at once
                await ws.send(json.dumps(config_from(args)))
            await state.wait_until(lambda: bool(state.session_id) or state.over, 30)
            if not state.session_id:
                await receiver
                if state.refused is None:
                    reason = CLOSE_REASONS.get(state.close_code or 0, "the server closed the connection")
                    print(f"error: {reason} (close code {state.close_code})", file=sys.stderr)
                return 1
            try:
                if pcm:
                    await stream_wav(ws, state, pcm, sample_rate=args.sample_rate, tail=args.tail)
                else:
                    await stream_microphone(ws, state, sample_rate=args.sample_rate)
            except (KeyboardInterrupt, asyncio.CancelledError):
                pass
            except ConnectionClosed:
                pass
            if not state.over:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"type": "end"}))
            # The server closes right after session.ended; its close code says how it ended.
            await state.wait_until(lambda: state.closed, 30)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
    finally:
        if close_speaker is not None:
            close_speaker()
        if args.out and state.agent_audio:
            write_wav(Path(args.out), bytes(state.agent_audio), sample_rate=args.sample_rate)
            seconds = len(state.agent_audio) / 2 / args.sample_rate
            print(f"saved {seconds:.1f} s of agent audio to {args.out}", file=sys.stderr, flush=True)
    if state.ended is None:
        print(f"connection closed without session.ended (close code {state.close_code})", file=sys.stderr)
        return 1
    return 0 if state.close_code == 1000 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m clients.voice_ws_client",
        description="Talk to CallMissed over the legacy PCM WebSocket.",
    )
    parser.add_argument("--key", default=os.environ.get("CALLMISSED_API_KEY"), help="cm_… key (or CALLMISSED_API_KEY)")
    parser.add_argument(
        "--url",
        default=os.environ.get("CALLMISSED_WS_URL", DEFAULT_URL),
        help=f"WebSocket URL (or CALLMISSED_WS_URL; default {DEFAULT_URL})",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="WAV file to say to the agent (any rate, channels, width)")
    source.add_argument("--say", help="text to say to the agent, in the offline piper voice")
    source.add_argument(
        "--mic", action="store_true", help="speak into the default microphone (needs sounddevice and PortAudio)"
    )
    parser.add_argument("--out", help="write the agent's audio to this WAV file")
    parser.add_argument(
        "--speaker", action="store_true", help="play the agent's audio (needs sounddevice and PortAudio)"
    )
    parser.add_argument("--sample-rate", type=int, default=16000, choices=SUPPORTED_SAMPLE_RATES)
    parser.add_argument("--tail", type=float, default=3.0, help="seconds of silence after the file, at least")
    parser.add_argument("--system-prompt", dest="system_prompt")
    parser.add_argument("--voice")
    parser.add_argument("--language")
    parser.add_argument("--llm-model", dest="llm_model")
    parser.add_argument("--tts-provider", dest="tts_provider")
    parser.add_argument("--max-duration", dest="max_duration_seconds", type=int)
    parser.add_argument("--metadata", help='JSON object, e.g. \'{"ticket": "T-1"}\'')
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key (or CALLMISSED_API_KEY) is required")
    if args.wav and not Path(args.wav).is_file():
        parser.error(f"--wav: no such file: {args.wav}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run_call(args))
    except KeyboardInterrupt:
        return 1
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
