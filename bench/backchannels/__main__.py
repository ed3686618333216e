"""Backchannels over the agent's speech, per language: does the agent keep talking through a
caller's "haan", and stop for a real interruption, and how fast?

    .venv/bin/python -m bench.backchannels [--languages hi-IN,ta-IN] [--parallel 1] [--no-baseline]

Every language is one whole ``Conversation`` (livekit AgentSession, the real Sarvam STT/TTS and
OpenAI-compatible LLM clients, ``audio_io`` in and out) against the loopback fakes. The agent
answers every turn with a long reply; a caller streams real-time audio on a 20 ms clock and, for
each item of ``corpus.json``, speaks over that reply (a tone the fake's VAD hears as speech, for
the item's durations) after scripting the fake STT to transcribe it as the item's text. The
Sarvam fake sends END_SPEECH after the corpus's ``end_silence_ms`` of silence, as Sarvam does.

Per utterance, expected to let the agent continue or to stop it:

* false cut-off = a "continue" utterance after which the agent was interrupted;
* missed interruption = a "stop" utterance after which it was not;
* stop latency = the caller's first speech frame pushed to the pipeline → the last agent audio
  frame handed to the transport before the interruption (0 when none was): what the caller
  hears. "from decision" measures from the pipeline's decision to stop the agent's audio (the
  STT's start of speech arriving while the agent speaks) instead — the barge-in target
  (bench/README.md: ≤ 50 ms) is stated from there;
* backchannel pause = how long the agent's audio stopped around a "continue" utterance (the
  longest gap between two agent frames): the price of deciding on the transcript.

Baseline, in the same run: the same corpus with backchannels disabled (the old barge-in, which
stops on any speech) — every "continue" utterance is then a false cut-off. ``--livekit-resume``
adds a run of livekit-agents' own false-interruption handling (``resume_false_interruption``,
``min_words``) in place of the gate, the option the issue asked to measure first.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_worker import contracts
from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
from agent_worker.conversation import Conversation, ConversationObserver
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam, silence, tone

CORPUS = Path(__file__).with_name("corpus.json")
SAMPLE_RATE = 16000
CHUNK_S = 0.02
SARVAM_KEY = "bench-sarvam"
CLARIFAI_PAT = "bench-clarifai"
TIMEOUT_S = 30.0
# Long enough that no reply runs out while items are spoken over it (20 ms of audio a character).
LONG_REPLY = " ".join(
    f"Point {n} of the clinic's services, explained at some length in this sentence." for n in range(24)
)
PROMPT_TEXT = "tell me about the clinic"
# How long after the fake sent an utterance's transcript the outcome is read.
SETTLE_S = 1.0
LIVEKIT_MIN_WORDS = 2


class Probe(Conversation):
    """Records when the pipeline decided to stop the agent's audio and when it interrupted."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stops_decided: list[float] = []
        self.interrupted: list[float] = []

    def _hold_for_caller(self) -> bool:
        decided = time.monotonic()
        held = super()._hold_for_caller()
        if held:
            self.stops_decided.append(decided)
        return held

    def _barge_in(self) -> None:
        self.stops_decided.append(time.monotonic())
        super()._barge_in()

    def _interrupt_agent(self) -> None:
        self.interrupted.append(time.monotonic())
        super()._interrupt_agent()


class LivekitResumeProbe(Probe):
    """livekit-agents' own answer, for comparison: no gate and no barge-in at start of speech;
    the session's false-interruption handling with a pausable output, and ``min_words`` so that
    one-word acknowledgements do not interrupt."""

    def _build_session(self, providers: Any) -> Any:
        session = super()._build_session(providers)
        session.options.interruption.update(
            {"resume_false_interruption": True, "false_interruption_timeout": 1.0, "min_words": LIVEKIT_MIN_WORDS}
        )
        return session

    def _barge_in(self) -> None:
        return None


@dataclass
class Observer(ConversationObserver):
    states: list[tuple[float, str]] = field(default_factory=list)
    backchannels: int = 0
    interrupted: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_interrupted(self) -> None:
        self.interrupted.append(time.monotonic())
        self.changed.set()

    async def on_agent_state(self, state: str) -> None:
        self.states.append((time.monotonic(), state))
        self.changed.set()

    async def on_backchannel(self, text: str, language: str) -> None:
        self.backchannels += 1
        self.changed.set()

    async def wait(self, predicate: Any, within: float = TIMEOUT_S) -> bool:
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True


class Caller:
    def __init__(self) -> None:
        self.input = QueueAudioInput(sample_rate=SAMPLE_RATE)
        self.output = CallbackAudioOutput(sample_rate=SAMPLE_RATE, on_audio=self._hear, realtime=True)
        self.heard: list[float] = []  # when each agent frame was handed to this "transport"
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[float] | None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _hear(self, pcm: bytes) -> None:
        self.heard.append(time.monotonic())

    def start(self) -> None:
        self._task = asyncio.create_task(self._stream())

    async def speak(self, parts: list[tuple[bool, float]]) -> float:
        """Stream (speech?, seconds) parts in real time; returns when the first was pushed."""
        started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        first = True
        for speech, seconds in parts:
            pcm = tone(seconds, SAMPLE_RATE) if speech else silence(seconds, SAMPLE_RATE)
            for chunk in _chunks(pcm):
                self._queue.put_nowait((chunk, started if first else None))
                first = False
        self._queue.put_nowait((b"", done))
        await done
        return started.result()

    async def _stream(self) -> None:
        quiet = silence(CHUNK_S, SAMPLE_RATE)
        next_at = time.monotonic()
        while True:
            chunk = quiet
            while not self._queue.empty():
                pcm, marker = self._queue.get_nowait()
                if marker is not None and not marker.done():
                    marker.set_result(time.monotonic())
                if pcm:
                    chunk = pcm
                    break
            self.input.push(chunk)
            next_at += CHUNK_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def close(self) -> None:
        self.input.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.output.aclose()


def _chunks(pcm: bytes) -> Iterator[bytes]:
    step = int(SAMPLE_RATE * CHUNK_S) * 2
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


@dataclass
class LanguageResult:
    language: str
    continue_utterances: int = 0
    stop_utterances: int = 0
    false_cutoffs: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    stop_ms: list[float] = field(default_factory=list)
    stop_from_decision_ms: list[float] = field(default_factory=list)
    pause_ms: list[float] = field(default_factory=list)


async def run_language(
    language: str, items: list[dict[str, Any]], end_silence_ms: float, *, mode: str
) -> LanguageResult:
    result = LanguageResult(language=language)
    async with (
        FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=end_silence_ms) as sarvam,
        FakeChatServer(api_key=CLARIFAI_PAT) as chat,
    ):
        chat.script_replies("Hello, this is the clinic.")
        chat.default_reply = LONG_REPLY
        settings = ProviderSettings(
            speech_providers=SpeechMode.REAL,
            sarvam_api_key=SARVAM_KEY,
            sarvam_base_url=sarvam.http_url,
            sarvam_ws_url=sarvam.ws_url,
            clarifai_pat=CLARIFAI_PAT,
            clarifai_base_url=chat.base_url("/v2/ext/openai/v1"),
        )
        config = contracts.SessionConfig(
            system_prompt="You are a benchmark.",
            language=language,
            max_duration_seconds=3600,
            backchannels=contracts.BackchannelSettings(enabled=mode == "gate"),
        )
        observer = Observer()
        conversation = (LivekitResumeProbe if mode == "livekit" else Probe)(
            session_id=f"bench-{language}",
            config=config,
            providers=settings,
            observer=observer,
            aec_warmup_seconds=None,
        )
        caller = Caller()
        caller.start()
        try:
            await conversation.start(audio_input=caller.input, audio_output=caller.output)
            await observer.wait(lambda: [s for _, s in observer.states][-2:] == ["speaking", "listening"])
            for item in items:
                stops = observer.interrupted if mode == "livekit" else conversation.interrupted
                await _run_item(item, conversation, stops, observer, caller, sarvam, result)
        finally:
            await conversation.end(contracts.EndReason.COMPLETED)
            await caller.close()
    return result


def _state(observer: Observer) -> str:
    return observer.states[-1][1] if observer.states else ""


async def _agent_speaking(observer: Observer, caller: Caller, sarvam: FakeSarvam) -> float:
    """Make sure the agent is in the middle of a long reply; when the reply (or the wait) began."""
    if _state(observer) == "speaking":
        return time.monotonic()
    if _state(observer) != "thinking":
        await observer.wait(lambda: _state(observer) == "listening")
        sarvam.script_transcripts(PROMPT_TEXT)
        await caller.speak([(True, 0.5)])
    if not await observer.wait(lambda: _state(observer) == "speaking"):
        raise RuntimeError("the agent did not start its reply")
    return observer.states[-1][0]


async def _run_item(
    item: dict[str, Any],
    conversation: Probe,
    interrupted: list[float],
    observer: Observer,
    caller: Caller,
    sarvam: FakeSarvam,
    result: LanguageResult,
) -> None:
    begin = await _agent_speaking(observer, caller, sarvam)
    await asyncio.sleep(max(0.0, begin + item["at_ms"] / 1000 - time.monotonic()))
    for utterance in item["utterances"]:
        if utterance.get("gap_ms"):
            await asyncio.sleep(utterance["gap_ms"] / 1000)
        durations = utterance["speech_ms"] if isinstance(utterance["speech_ms"], list) else [utterance["speech_ms"]]
        parts = [(n % 2 == 0, ms / 1000) for n, ms in enumerate(durations)]
        interrupted_before = len(interrupted)
        sent_before = len(sarvam.stt_utterances)
        sarvam.script_transcripts(utterance["text"])
        spoke_at = await caller.speak(parts)
        await observer.wait(lambda: len(sarvam.stt_utterances) > sent_before)  # noqa: B023
        await observer.wait(lambda: len(interrupted) > interrupted_before, within=SETTLE_S)  # noqa: B023
        label = f"{item['kind']}: {utterance['text']}"
        stopped = len(interrupted) > interrupted_before
        if utterance["expect"] == "continue":
            result.continue_utterances += 1
            if stopped:
                result.false_cutoffs.append(label)
            else:
                heard = [at for at in caller.heard if at >= spoke_at - 0.1]
                gaps = [b - a for a, b in itertools.pairwise(heard)]
                result.pause_ms.append(max(gaps, default=0.0) * 1000)
            continue
        result.stop_utterances += 1
        if not stopped:
            result.missed.append(label)
            continue
        interrupted_at = interrupted[-1]
        decided = next((at for at in conversation.stops_decided if at >= spoke_at), interrupted_at)
        result.stop_ms.append(_last_frame_after(caller, spoke_at, interrupted_at) * 1000)
        result.stop_from_decision_ms.append(_last_frame_after(caller, decided, interrupted_at) * 1000)
        # The agent answers the interruption with another long reply: wait for it, so the next
        # item talks over speech, not over the silence before it.
        await observer.wait(lambda: _state(observer) == "speaking")


def _last_frame_after(caller: Caller, since: float, until: float) -> float:
    after = [at for at in caller.heard if since <= at <= until]
    return after[-1] - since if after else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _fmt(values: list[float]) -> str:
    return f"{_pct(values, 0.5):6.1f} / {_pct(values, 0.95):6.1f}" if values else f"{'—':>15}"


def print_table(title: str, results: list[LanguageResult]) -> None:
    print(f"\n{title}")
    print(
        f"{'language':<9} {'continue':>8} {'false cut-offs':>14} {'stop':>5} {'missed':>6} "
        f"{'stop ms p50/p95':>16} {'from decision':>16} {'bc pause ms p50/p95':>20}"
    )
    total = LanguageResult(language="all")
    for r in [*results, total]:
        if r is total:
            for other in results:
                total.continue_utterances += other.continue_utterances
                total.stop_utterances += other.stop_utterances
                total.false_cutoffs += other.false_cutoffs
                total.missed += other.missed
                total.stop_ms += other.stop_ms
                total.stop_from_decision_ms += other.stop_from_decision_ms
                total.pause_ms += other.pause_ms
        print(
            f"{r.language:<9} {r.continue_utterances:>8} {len(r.false_cutoffs):>14} {r.stop_utterances:>5} "
            f"{len(r.missed):>6} {_fmt(r.stop_ms):>16} {_fmt(r.stop_from_decision_ms):>16} {_fmt(r.pause_ms):>20}"
        )
    for r in results:
        for label in r.false_cutoffs:
            print(f"  false cut-off ({r.language}) {label}")
        for label in r.missed:
            print(f"  missed ({r.language}) {label}")


async def run(languages: list[str], corpus: dict[str, Any], *, mode: str, parallel: int) -> list[LanguageResult]:
    gate = asyncio.Semaphore(parallel)

    async def one(language: str) -> LanguageResult:
        async with gate:
            return await run_language(language, corpus["languages"][language], corpus["end_silence_ms"], mode=mode)

    return list(await asyncio.gather(*(one(language) for language in languages)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--languages", default="", help="comma-separated codes; all of the corpus by default")
    parser.add_argument("--parallel", type=int, default=1, help="languages run at once (one session each)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run with backchannels disabled")
    parser.add_argument(
        "--livekit-resume",
        action="store_true",
        help=f"also run livekit-agents' false-interruption resume (min_words={LIVEKIT_MIN_WORDS}) instead of the gate",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    corpus = json.loads(CORPUS.read_text())
    languages = [code for code in args.languages.split(",") if code] or list(corpus["languages"])
    started = time.monotonic()
    results = asyncio.run(run(languages, corpus, mode="gate", parallel=args.parallel))
    print_table("backchannels enabled (the default)", results)
    if not args.no_baseline:
        baseline = asyncio.run(run(languages, corpus, mode="off", parallel=args.parallel))
        print_table("baseline: backchannels disabled (stop on any speech)", baseline)
    if args.livekit_resume:
        livekit = asyncio.run(run(languages, corpus, mode="livekit", parallel=args.parallel))
        print_table(f"livekit-agents' resume_false_interruption, min_words={LIVEKIT_MIN_WORDS}", livekit)
    elapsed = time.monotonic() - started
    print(f"\n{elapsed:.0f} s, parallel {args.parallel}, end of speech after {corpus['end_silence_ms']} ms")


if __name__ == "__main__":
    main()
