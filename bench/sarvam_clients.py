"""What our thin Sarvam STT/TTS clients cost next to livekit-plugins-sarvam doing the same work.

    PYTHONPATH=/tmp/plugvenv/site .venv/bin/python -m bench.sarvam_clients [--sessions 10]

The plugin is not a dependency of the project: install it (and livekit-plugins-openai, which
its package imports) outside the project's venv with the same livekit-agents pin, e.g.
``pip download --no-deps livekit-plugins-sarvam==1.8.9 livekit-plugins-openai==1.8.9`` and
unzip both wheels into ``/tmp/plugvenv/site``.

Both clients run against the same Sarvam fake in a child process (so its JSON, base64 and VAD
work is not counted), one client at a time, in this process on one event loop. Measured:

* STT: ``--sessions`` streams each send ``--seconds`` of caller audio (utterances of 0.62 s of tone
  and 1.2 s of silence) in 20 ms frames on a real-time clock, as a room delivers it; CPU of this
  process per session-second of audio, and each turn's time from the last speech frame pushed
  to its transcript less the fake's injected end-of-speech silence and transcript delay;
* TTS: ``--sessions`` streams each speak ``--replies`` replies of ~150 characters pushed as an
  LLM writes them; CPU per reply, and the time from the first text pushed to the first audio
  (p50). Ours asks for linear16 PCM; the plugin is run at its default
  codec (mp3, decoded in this process) and again at linear16.

CPU is ``time.process_time()`` over the measured work (every thread of this process: the
plugin's mp3 decoding runs on a thread). Printed with the wall time; the machine is shared, so
run it twice and compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents import APIConnectOptions, stt, tts

from agent_worker.providers.sarvam_stt import SarvamSTT
from agent_worker.providers.sarvam_tts import SarvamTTS
from bench.pipeline_overhead import SARVAM_KEY, STT_INJECTED_S, serve_sarvam
from testsupport.fakes.sarvam import silence, tone

RATE = 16000
FRAME_S = 0.02
INJECTED_STT_S = STT_INJECTED_S
CONN = APIConnectOptions(max_retry=0, timeout=20.0)
REPLY = (
    "Sure, our clinic opens at nine in the morning on weekdays. "
    "You can book an appointment online, or I can note your name and number now."
)


# Speech of 0.62 s, then 1.2 s of silence: not a multiple of 50 ms, so where each utterance ends
# moves against a client's 50 ms message boundaries as a real caller's would.
SPEECH_S = 0.62
UTTERANCE_S = SPEECH_S + 1.2
UTTERANCE_FRAMES = round(UTTERANCE_S / FRAME_S)
SPEECH_FRAMES = round(SPEECH_S / FRAME_S)


def _caller_audio(seconds: float) -> list[bytes]:
    one = tone(SPEECH_S, RATE) + silence(UTTERANCE_S - SPEECH_S, RATE)
    pcm = one * max(1, round(seconds / UTTERANCE_S))
    step = int(RATE * FRAME_S) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def _stt_session(client: stt.STT, frames: list[bytes], legs: list[float]) -> int:
    """Stream ``frames`` in real time; append to ``legs`` each turn's time from the caller's last
    speech frame to its transcript, less what the fake injects (end-of-speech silence and
    transcript delay): what the client itself adds."""
    stream = client.stream(conn_options=CONN)
    expected = len(frames) // UTTERANCE_FRAMES
    speech_ended: list[float] = []
    finals = 0
    all_heard = asyncio.Event()

    async def read() -> None:
        nonlocal finals
        async for ev in stream:
            if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                legs.append(time.monotonic() - speech_ended[finals] - INJECTED_STT_S)
                finals += 1
                if finals >= expected:
                    all_heard.set()

    reader = asyncio.create_task(read())
    next_at = time.monotonic()
    for index, pcm in enumerate(frames):
        stream.push_frame(rtc.AudioFrame(pcm, RATE, 1, len(pcm) // 2))
        if index % UTTERANCE_FRAMES == SPEECH_FRAMES - 1:
            speech_ended.append(time.monotonic())
        next_at += FRAME_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    # The plugin waits for Sarvam to hang up after the input ends (the fake, like our client,
    # does not), so neither ends its input: the last transcript is awaited, then the stream closed.
    await asyncio.wait_for(all_heard.wait(), 10)
    await stream.aclose()
    reader.cancel()
    return finals


async def _tts_session(client: tts.TTS, replies: int, first_audio: list[float]) -> float:
    seconds = 0.0
    for _ in range(replies):
        stream = client.stream(conn_options=CONN)
        started = time.monotonic()

        async def push(stream: tts.SynthesizeStream = stream) -> None:
            for word in REPLY.split(" "):
                stream.push_text(word + " ")
                await asyncio.sleep(0.005)  # an LLM's token rate
            stream.end_input()

        pusher = asyncio.create_task(push())
        heard = False
        async for ev in stream:
            if not heard:
                first_audio.append(time.monotonic() - started)
                heard = True
            seconds += ev.frame.duration
        await pusher
        await stream.aclose()
    return seconds


async def _measure(label: str, work: Callable[[], Any], unit: float, unit_name: str) -> None:
    cpu, wall = time.process_time(), time.monotonic()
    result = await work()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    print(f"  {label:<34} CPU {cpu * 1000 / unit:8.2f} ms per {unit_name}   wall {wall:6.1f} s   {result}")


async def main(args: argparse.Namespace, ws_url: str) -> None:
    plugin = importlib.import_module("livekit.plugins.sarvam")
    frames = _caller_audio(args.seconds)
    audio_s = len(frames) * FRAME_S
    n = args.sessions

    print(f"STT: {n} sessions x {audio_s:.1f} s of audio, real time")
    ours = SarvamSTT(api_key=SARVAM_KEY, language="en-IN", ws_url=ws_url)
    # The plugin's STT takes no streaming URL (only the REST base_url; each stream() derives the
    # socket URL from a module constant), so the fake is reached by replacing that constant.
    importlib.import_module("livekit.plugins.sarvam.stt").SARVAM_STT_STREAMING_URL = ws_url + "/speech-to-text/ws"
    theirs = plugin.STT(language="en-IN", model="saaras:v3", api_key=SARVAM_KEY, flush_signal=True)
    for label, client in (("ours (sarvam_stt)", ours), ("livekit-plugins-sarvam 1.8.9", theirs)):

        async def stt_work(client: stt.STT = client) -> str:
            legs: list[float] = []
            finals = await asyncio.gather(*(_stt_session(client, frames, legs) for _ in range(n)))
            legs.sort()
            p50, p95 = legs[len(legs) // 2] * 1000, legs[int(len(legs) * 0.95)] * 1000
            return f"finals {sum(finals)}, speech end to transcript less injected p50 {p50:.1f} p95 {p95:.1f} ms"

        await _measure(label, stt_work, n * audio_s, "session-second")
        await client.aclose()

    print(f"TTS: {n} sessions x {args.replies} replies of {len(REPLY)} characters")
    clients: list[tuple[str, tts.TTS]] = [
        ("ours (linear16)", SarvamTTS(api_key=SARVAM_KEY, voice="shubh", language="en-IN", ws_url=ws_url)),
    ]
    for codec in ("mp3", "linear16"):
        clients.append(
            (
                f"plugin ({codec})",
                plugin.TTS(
                    target_language_code="en-IN",
                    speaker="shubh",
                    model="bulbul:v3",
                    api_key=SARVAM_KEY,
                    ws_url=ws_url + "/text-to-speech/ws",
                    speech_sample_rate=RATE,
                    output_audio_codec=codec,
                ),
            )
        )
    for label, synth in clients:

        async def tts_work(synth: tts.TTS = synth) -> str:
            first_audio: list[float] = []
            seconds = await asyncio.gather(*(_tts_session(synth, args.replies, first_audio) for _ in range(n)))
            first_audio.sort()
            p50 = first_audio[len(first_audio) // 2] * 1000
            return f"audio {sum(seconds):.1f} s, first audio p50 {p50:.1f} ms"

        await _measure(label, tts_work, n * args.replies, "reply")
        await synth.aclose()


async def _with_http_context(work: Any) -> None:
    # The plugin's TTS takes its aiohttp session from the agent job's context.
    from livekit.agents.utils import http_context

    async with http_context.open():
        await work


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=18.0, help="caller audio per STT session")
    parser.add_argument("--replies", type=int, default=5, help="replies per TTS session")
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    fake = multiprocessing.Process(target=serve_sarvam, args=(child,), daemon=True)
    fake.start()
    _http_url, ws_url = parent.recv()
    try:
        asyncio.run(_with_http_context(main(args, ws_url)))
    finally:
        parent.send("stop")
        _load, violations = parent.recv()
        fake.join(timeout=5)
    print(f"fake protocol violations: {violations or 'none'}")


if __name__ == "__main__":
    run()
