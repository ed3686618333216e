"""The conversation of ``bench.pipeline_overhead``, run by Pipecat: the peer's side of ``bench.peers``.

Runs in the Pipecat virtualenv (``requirements-pipecat.txt``), not the project's: it imports
nothing from the project. ``bench.peers`` starts the fakes, writes a plan (JSON) to this script's
standard input — the fakes' URLs and keys, the sessions, turns and spread, the caller's audio
chunks as bytes, the reply's sample rate, the turn-stop variant — and reads the raw timings back
from its standard output; the figures are computed on the project's side with the same code as
ours.

Per session: one Pipecat pipeline (caller input → ``SarvamSTTService`` → user aggregator →
``OpenAILLMService`` → ``SarvamTTSService`` → agent output → assistant aggregator), one
``PipelineWorker`` and ``WorkerRunner`` each, all on this process's one event loop. No network
transport: the input is a ``BaseInputTransport`` fed 20 ms ``InputAudioRawFrame`` s on one
real-time clock for every caller; the output is a ``BaseOutputTransport`` that records when each
agent frame is handed to it and paces what it takes in real time, keeping the same lead on the
listener's playhead as ours (``SEND_AHEAD_S``).

Turn stop variants: ``stock`` is what ``SarvamSTTService`` with ``vad_signals`` asks for
(``ExternalUserTurnStrategies``); ``adjusted`` ends the turn on the first final transcript after
Sarvam's END_SPEECH, as livekit's STT turn detection does in ours.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMRunFrame,
    OutputAudioRawFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.sarvam.stt import SarvamSTTService
from pipecat.services.sarvam.tts import SarvamTTSService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start import ExternalUserTurnStartStrategy
from pipecat.turns.user_stop import ExternalUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner
from sarvamai.environment import SarvamAIEnvironment

# Ours sends the agent's audio this far ahead of the listener's playhead (agent_worker/audio_io.py).
SEND_AHEAD_S = 0.06


class TranscriptEndsTurn(ExternalUserTurnStopStrategy):
    """The "adjusted" stop: a final transcript after Sarvam's END_SPEECH ends the turn at once.

    The stock strategy, on END_SPEECH-then-transcript (Sarvam's order), ends the turn only when
    its ``timeout`` (0.5 s) passes without a further transcript. This subclass uses only the
    extension points the stock class documents (``process_frame``, ``trigger_user_turn_stopped``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stopped = False

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        result = await super().process_frame(frame)
        if isinstance(frame, ProposedUserStartedSpeakingFrame):
            self._stopped = False
        elif isinstance(frame, ProposedUserStoppedSpeakingFrame):
            self._stopped = True
        elif isinstance(frame, TranscriptionFrame) and self._stopped and frame.text.strip():
            self._stopped = False
            await self.trigger_user_turn_stopped()
        return result


class CallerInput(BaseInputTransport):
    def __init__(self, params: TransportParams, caller: Caller) -> None:
        super().__init__(params)
        self._caller = caller

    async def start(self, frame: Any) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._caller.transport = self  # the microphone clock feeds it from now on


class AgentOutput(BaseOutputTransport):
    """Records when each agent frame is handed over and paces them in real time."""

    def __init__(self, params: TransportParams, caller: Caller) -> None:
        super().__init__(params)
        self._caller = caller
        self._play_until = 0.0

    async def start(self, frame: Any) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            self._play_until = time.monotonic()  # what was not sent is dropped: nothing is ahead
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        # Sent once the reply's last frame has been written (or the reply was cut off): the
        # agent is done speaking, as ours reports "listening" once playout has finished.
        if isinstance(frame, BotStoppedSpeakingFrame) and direction is FrameDirection.DOWNSTREAM:
            self._caller.turn_stopped.set()
        await super().push_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        now = time.monotonic()
        self._caller.heard(now)
        seconds = len(frame.audio) / 2 / frame.sample_rate
        self._play_until = max(self._play_until, now) + seconds
        delay = self._play_until - SEND_AHEAD_S - now
        if delay > 0:
            await asyncio.sleep(delay)
        return True


@dataclass
class Caller:
    quiet: bytes
    speech_chunks: list[bytes]
    sample_rate: int
    transport: CallerInput | None = None
    frames_at: list[float] = field(default_factory=list)
    speech: list[bytes] = field(default_factory=list)
    speech_ended_at: float = 0.0
    first_audio_after: asyncio.Future[float] | None = None
    transcripts_at: list[float] = field(default_factory=list)
    speech_started_at: list[float] = field(default_factory=list)
    turn_stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def heard(self, now: float) -> None:
        self.frames_at.append(now)
        if self.first_audio_after is not None and not self.first_audio_after.done():
            self.first_audio_after.set_result(now)

    async def tick(self) -> None:
        if self.transport is None:
            return
        if self.speech:
            pcm = self.speech.pop(0)
            if not self.speech:
                self.speech_ended_at = time.monotonic()
        else:
            pcm = self.quiet
        await self.transport.push_audio_frame(
            InputAudioRawFrame(audio=pcm, sample_rate=self.sample_rate, num_channels=1)
        )

    def say(self) -> asyncio.Future[float]:
        self.first_audio_after = asyncio.get_running_loop().create_future()
        self.speech = list(self.speech_chunks)
        return self.first_audio_after


@dataclass
class Schedule:
    sessions: int
    spread_s: float
    ready: int = 0
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)
    begin: float = 0.0

    def offset(self, index: int) -> float:
        return self.spread_s * index / self.sessions

    def arrive(self) -> None:
        self.ready += 1
        if self.ready == self.sessions:
            self.begin = time.monotonic() + 0.1
            self.all_ready.set()


def build_worker(plan: dict[str, Any], caller: Caller) -> PipelineWorker:
    rate = plan["sample_rate"]
    stt = SarvamSTTService(
        api_key=plan["sarvam_key"],
        sample_rate=rate,
        settings=SarvamSTTService.Settings(model=plan["stt_model"], language=plan["language"], vad_signals=True),
    )

    @stt.event_handler("on_speech_started")
    async def _speech_started(_service: Any) -> None:
        caller.speech_started_at.append(time.monotonic())

    @stt.event_handler("on_utterance_end")
    async def _utterance_end(_service: Any) -> None:
        caller.transcripts_at.append(time.monotonic())

    llm = OpenAILLMService(
        api_key=plan["chat_key"],
        base_url=plan["chat_base"],
        settings=OpenAILLMService.Settings(model=plan["llm_model"], system_instruction=plan["system_prompt"]),
    )
    tts = SarvamTTSService(
        api_key=plan["sarvam_key"],
        url=plan["sarvam_ws"] + "/text-to-speech/ws",
        sample_rate=rate,
        settings=SarvamTTSService.Settings(
            model=plan["tts_model"],
            voice=plan["voice"],
            language=plan["language"],
            min_buffer_size=plan["tts_min_buffer_size"],
            max_chunk_length=plan["tts_max_chunk_length"],
        ),
    )
    params = TransportParams(
        audio_in_enabled=True,
        audio_in_sample_rate=rate,
        audio_out_enabled=True,
        audio_out_sample_rate=rate,
        audio_out_10ms_chunks=plan["audio_out_10ms_chunks"],
    )
    source = CallerInput(params, caller)
    sink = AgentOutput(params, caller)
    context = LLMContext()
    user_params = LLMUserAggregatorParams()
    if plan["turn_stop"] == "adjusted":
        user_params = LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                start=[ExternalUserTurnStartStrategy()], stop=[TranscriptEndsTurn()]
            )
        )
    pair = LLMContextAggregatorPair(context, user_params=user_params)
    user, assistant = pair.user(), pair.assistant()
    pipeline = Pipeline([source, stt, user, llm, tts, sink, assistant])
    return PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=rate),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )


async def wait_turn_stopped(caller: Caller, limit_s: float) -> None:
    await asyncio.wait_for(caller.turn_stopped.wait(), limit_s)
    caller.turn_stopped.clear()


async def one_session(index: int, plan: dict[str, Any], caller: Caller, schedule: Schedule) -> dict[str, Any]:
    timeout = plan["state_timeout_s"]
    worker = build_worker(plan, caller)
    runner = WorkerRunner(handle_sigint=False)  # one per session, as a server runs one per call
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    turns: list[list[float]] = []
    stop: float | None = None
    try:
        await worker.queue_frame(LLMRunFrame())  # the agent greets first, as ours does
        await wait_turn_stopped(caller, timeout)
        schedule.arrive()
        await schedule.all_ready.wait()
        await asyncio.sleep(max(0.0, schedule.begin + schedule.offset(index) - time.monotonic()))
        for _ in range(plan["turns"]):
            heard = len(caller.transcripts_at)
            first_audio = await asyncio.wait_for(caller.say(), timeout)
            if len(caller.transcripts_at) != heard + 1:
                raise RuntimeError(f"session {index}: the reply came without exactly one transcript")
            turns.append([caller.speech_ended_at, caller.transcripts_at[-1], first_audio])
            await wait_turn_stopped(caller, timeout)
        # Barge-in: this reply is long; talk over it once it is playing.
        await asyncio.wait_for(caller.say(), timeout)
        await asyncio.sleep(plan["barge_in_after_s"])
        talked_over_at = time.monotonic()
        caller.say()
        await wait_turn_stopped(caller, timeout)
        stopped_at = time.monotonic()
        decided = next((at for at in caller.speech_started_at if at >= talked_over_at), None)
        if decided is not None:
            after = [at for at in caller.frames_at if decided <= at <= stopped_at]
            stop = after[-1] - decided if after else 0.0
    finally:
        await worker.cancel()
        await running
    return {"turns": turns, "barge_in_stop": stop}


async def feed(callers: list[Caller], chunk_s: float, stop: asyncio.Event) -> None:
    next_at = time.monotonic()
    while not stop.is_set():
        for caller in callers:
            await caller.tick()
        next_at += chunk_s
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def watch_loop(lags: list[float], stop: asyncio.Event) -> None:
    """How late a 5 ms timer fires, as ``bench.pipeline_overhead.watch_loop`` measures it."""
    while not stop.is_set():
        at = time.monotonic()
        await asyncio.sleep(0.005)
        lags.append(time.monotonic() - at - 0.005)


async def watch_after(schedule: Schedule, lags: list[float], done: asyncio.Event) -> float:
    await schedule.all_ready.wait()
    cpu, wall = time.process_time(), time.monotonic()
    await watch_loop(lags, done)
    return (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    quiet = bytes.fromhex(plan["quiet_hex"])
    speech = [bytes.fromhex(chunk) for chunk in plan["speech_hex"]]
    callers = [
        Caller(quiet=quiet, speech_chunks=speech, sample_rate=plan["sample_rate"]) for _ in range(plan["sessions"])
    ]
    schedule = Schedule(sessions=plan["sessions"], spread_s=plan["spread_s"])
    stop, measuring = asyncio.Event(), asyncio.Event()
    lags: list[float] = []
    feeder = asyncio.create_task(feed(callers, plan["chunk_s"], stop))
    watcher = asyncio.create_task(watch_after(schedule, lags, measuring))
    try:
        results = await asyncio.gather(*(one_session(i, plan, c, schedule) for i, c in enumerate(callers)))
    finally:
        stop.set()
        measuring.set()
        await feeder
    cpu_share = await watcher
    return {
        "turns": [t for r in results for t in r["turns"]],
        "barge_in_stop": [r["barge_in_stop"] for r in results if r["barge_in_stop"] is not None],
        "barge_ins_missed": sum(1 for r in results if r["barge_in_stop"] is None),
        "loop_lag": lags,
        "cpu_share": cpu_share,
    }


def main() -> None:
    plan = json.load(sys.stdin)
    # Pipecat logs every provider message at DEBUG by default; a deployment runs at WARNING or
    # above, and so does ours in its bench (logging at ERROR).
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    # SarvamSTTService has no URL parameter: it builds the Sarvam SDK client with the SDK's
    # default environment. Pointing that environment at the fake is the SDK's own public route.
    SarvamAIEnvironment.PRODUCTION.base = plan["sarvam_http"]
    SarvamAIEnvironment.PRODUCTION.production = plan["sarvam_ws"]
    result = asyncio.run(run(plan))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
