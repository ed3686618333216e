"""What the offline speech set costs on this machine: model loads, TTS speed, STT decode speed.

    .venv/bin/python -m bench.offline_speech

* import: seconds to import ``agent_worker.providers.offline`` in a fresh interpreter, next to
  ``livekit.agents`` alone (the models must not load at import);
* loads: the piper voice and a pocketsphinx decoder, first time in the process;
* TTS: real-time factor (synthesis seconds / audio seconds, resampling to 16 kHz included) per
  sentence, and time to the first audio frame of a streamed two-sentence reply;
* STT: decode seconds per second of speech (whole utterances, in the decoder process), and
  the end-of-utterance finish time when audio was fed in real time as the stream does (what
  the caller waits for after the VAD's silence window);
* loop stall: the longest gap a 1 ms ticker sees on the event loop while a stream decodes,
  i.e. whether recognition ever holds up the conversation's audio.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

from livekit import rtc

from agent_worker.providers.offline import OfflineSTT, OfflineTTS
from agent_worker.providers.offline.stt import _POOL
from agent_worker.providers.offline.tts import VOICES

RATE = 16000
SENTENCES = [
    "Please book an appointment for tomorrow morning.",
    "The clinic opens at nine and closes at five on weekdays.",
    "Could you tell me the doctor's name and the address of the clinic?",
    "Thank you, that is all I needed to know today.",
]


def _import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _silence(seconds: float) -> bytes:
    return b"\x00\x00" * round(seconds * RATE)


async def _first_audio_latency() -> float:
    client = OfflineTTS(sample_rate=RATE, voice="shubh")
    stream = client.stream()
    started = time.perf_counter()
    stream.push_text(SENTENCES[0] + " ")
    stream.push_text(SENTENCES[1])
    stream.end_input()
    first = 0.0
    async for _ in stream:
        first = first or time.perf_counter() - started
    await stream.aclose()
    return first


async def _stream_with_ticker(pcm: bytes) -> tuple[float, float]:
    """(seconds to transcribe ``pcm`` through a stream, longest event-loop gap meanwhile)."""
    client = OfflineSTT(language="en-US", sample_rate=RATE)
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    stream = client.stream()
    started = time.perf_counter()
    step = RATE // 50 * 2
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        stream.push_frame(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2))
        await asyncio.sleep(0)
    stream.end_input()
    texts = [ev.alternatives[0].text async for ev in stream if ev.alternatives]
    elapsed = time.perf_counter() - started
    running = False
    await ticking
    await stream.aclose()
    print(f"  stream transcripts: {texts}")
    return elapsed, worst


def main() -> None:
    print(f"import agent_worker.providers.offline: {_import_seconds('agent_worker.providers.offline'):.2f} s")
    print(f"import livekit.agents alone:            {_import_seconds('livekit.agents'):.2f} s")

    started = time.perf_counter()
    VOICES.get()
    print(f"piper voice load:        {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    recognizer = _POOL._take_or_load()
    print(f"pocketsphinx decoder process start: {time.perf_counter() - started:.2f} s")

    VOICES.synthesize("Warm up.", RATE)
    speech: list[bytes] = []
    factors = []
    for sentence in SENTENCES:
        started = time.perf_counter()
        pcm = VOICES.synthesize(sentence, RATE)
        elapsed = time.perf_counter() - started
        audio = len(pcm) / 2 / RATE
        factors.append(elapsed / audio)
        speech.append(pcm)
        print(f"  TTS {audio:4.2f} s of audio in {elapsed:.3f} s (RTF {elapsed / audio:.3f})")
    print(f"TTS real-time factor: median {statistics.median(factors):.3f}, max {max(factors):.3f}")
    print(f"TTS first audio of a streamed reply: {asyncio.run(_first_audio_latency()) * 1000:.0f} ms")

    per_second = []
    for pcm in speech:
        audio = len(pcm) / 2 / RATE
        started = time.perf_counter()
        text = recognizer.transcribe(pcm)
        elapsed = time.perf_counter() - started
        per_second.append(elapsed / audio)
        print(f"  STT {audio:4.2f} s decoded in {elapsed:.3f} s: {text!r}")
    print(f"STT decode time per second of audio: median {statistics.median(per_second):.3f} s")

    finishes = []
    chunk = RATE // 5 * 2  # 200 ms, fed in real time as a caller speaks
    for pcm in speech[:2]:
        recognizer.begin(b"")
        for i in range(0, len(pcm), chunk):
            recognizer.feed(pcm[i : i + chunk])
            time.sleep(0.2)
        started = time.perf_counter()
        recognizer.finish()
        finishes.append(time.perf_counter() - started)
    print(f"STT end-of-utterance finish after real-time feeding: {', '.join(f'{1000 * f:.0f}' for f in finishes)} ms")
    _POOL.release(recognizer)

    conversation = b"".join(_silence(0.6) + pcm for pcm in speech) + _silence(0.6)
    elapsed, worst = asyncio.run(_stream_with_ticker(conversation))
    audio = len(conversation) / 2 / RATE
    print(f"STT stream: {audio:.1f} s of audio in {elapsed:.2f} s; longest event-loop gap {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
