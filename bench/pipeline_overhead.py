"""What the conversation pipeline adds to the providers' own latency, at 1 and N sessions.

    .venv/bin/python -m bench.pipeline_overhead [--sessions 1,50] [--turns 5] [--spread 1.0]
        [--heap stock|settled|both]

Every session is a whole ``Conversation`` (livekit AgentSession, the real Sarvam STT/TTS and
OpenAI-compatible LLM clients, ``audio_io`` in and out) in this process, on one event loop,
against the loopback fakes. The Sarvam fake and the chat fake run in a child process each: real
providers do not share our CPU or GIL, and in-process their own JSON, base64 and VAD work would
be counted as ours (as would their waits for one another at the GIL in a shared process). They
inject fixed latencies: the STT's end-of-speech silence window and transcript delay, the LLM's
time to first token and the TTS's time to first audio. A caller streams real-time audio (silence,
then a tone the fake's VAD hears as speech) into each session on a 20 ms clock.

* overhead = (first agent audio frame handed to the transport after the caller stops) − (the
  latencies the fakes injected), p50/p95 over all measured turns of all sessions; split into the
  STT leg (caller stops → final transcript event in the session) and the reply leg (transcript →
  first audio), each minus its injected part;
* baseline = the same measurement for a no-op: one ``asyncio.sleep`` of the injected total per
  turn on the same event loop, at the same concurrency and spread, in the same run — what the
  loop's own scheduling costs on this machine. The overhead p95 is printed as a ratio to it;
* barge-in stop = the interruption decision (``TimedConversation.last_barge_in_at``: the caller's
  start of speech while the agent speaks) → the last agent audio frame handed to the transport
  after it (0 when none was);
* diagnostics: "barge-in tail" is the agent audio already handed to the transport that a
  real-time listener had not heard at the decision — what a client that keeps its playback buffer
  on ``interrupted`` still plays; loop lag (how late a 5 ms timer fires) and the CPU use of this
  process over the measured turns say whether the time went to a busy, a starved or a blocked
  event loop; the same two for each fake's process (over its whole run) say how much of it was
  the fakes' own queueing, which no real provider would add;
* CPU per session = this process's CPU over the measured turns (every thread, ``process_time``)
  per wall second, divided by the number of sessions: the share of a core one conversing
  session costs, the figure that decides how many sessions a core carries;
* collector: the garbage collections during the measured turns (``gc.callbacks``): how many
  full (generation 2) ones, the time all of them stopped the loop, and the longest single one.

``--heap`` chooses the collector: ``settled`` is what the servers run (``agent_worker.heap``:
start-up's objects frozen, a larger young generation), ``stock`` CPython's defaults with nothing
frozen, ``both`` runs each level twice in one run, stock then settled, for a same-run A/B.

Sessions start together, greet, and then begin their measured turns spread evenly over
``--spread`` seconds, because independent callers do not stop talking on the same 20 ms tick;
``--spread 0`` runs every turn of every session in lockstep, the worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import math
import multiprocessing
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from livekit.agents.voice.events import UserInputTranscribedEvent

from agent_worker import contracts, heap
from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
from agent_worker.conversation import Conversation, ConversationObserver
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from testsupport.fakes.openai_chat import ChatRequest, FakeChatServer
from testsupport.fakes.sarvam import DEFAULT_END_SILENCE_MS, FakeSarvam, silence, tone

SAMPLE_RATE = 16000
CHUNK_S = 0.02
SPEECH_S = 0.4
BARGE_IN_AFTER_S = 0.3  # how long the long reply plays before the caller talks over it
STATE_TIMEOUT_S = 30.0
SARVAM_KEY = "bench-sarvam"
CLARIFAI_PAT = "bench-clarifai"

# Latencies the fakes inject (seconds).
# Sarvam's documented end-of-speech silence (the fake's default), not a shorter one that would
# make the bench's turns look quicker than real ones.
STT_END_SILENCE_S = DEFAULT_END_SILENCE_MS / 1000
STT_TRANSCRIPT_DELAY_S = 0.05
LLM_FIRST_TOKEN_S = 0.15
# The fake delays only a connection's first audio, and the TTS client pools its sockets, so a
# first-audio delay would hit the greeting and no measured turn: none is injected.
TTS_FIRST_AUDIO_S = 0.0
STT_INJECTED_S = STT_END_SILENCE_S + STT_TRANSCRIPT_DELAY_S
REPLY_INJECTED_S = LLM_FIRST_TOKEN_S + TTS_FIRST_AUDIO_S
INJECTED_S = STT_INJECTED_S + REPLY_INJECTED_S

SHORT_REPLY = "Sure, we open at nine."
LONG_REPLY = " ".join(f"Point {n} of a long answer that the caller will cut off." for n in range(10))


def _chunks(pcm: bytes) -> list[bytes]:
    step = int(SAMPLE_RATE * CHUNK_S) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


# Made once: the bench's own work should not count against the pipeline.
QUIET = silence(CHUNK_S, SAMPLE_RATE)
SPEECH = _chunks(tone(SPEECH_S, SAMPLE_RATE))


@dataclass
class Turn:
    speech_ended_at: float
    transcript_at: float
    first_audio_at: float


@dataclass
class SessionResult:
    turns: list[Turn]
    barge_in_stop: float | None  # None: the caller talked over the agent and no barge-in was decided
    unplayed_at_barge_in: float


@dataclass
class StateObserver(ConversationObserver):
    states: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, agent state)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_agent_state(self, state: str) -> None:
        self.states.append((time.monotonic(), state))
        self.changed.set()

    async def wait_state(self, state: str, *, after: int) -> int:
        """Wait for ``state`` to be entered at index ``after`` or later; the index past it."""
        async with asyncio.timeout(STATE_TIMEOUT_S):
            while True:
                for index in range(after, len(self.states)):
                    if self.states[index][1] == state:
                        return index + 1
                self.changed.clear()
                await self.changed.wait()


class TimedConversation(Conversation):
    """Records when it decides the caller barged in, the instant the barge-in stop is measured from."""

    last_barge_in_at: float | None = None

    def _barge_in(self) -> None:
        self.last_barge_in_at = time.monotonic()
        super()._barge_in()

    def _hold_for_caller(self) -> bool:
        # With backchannels on, the agent's audio stops here (a pause) and the interruption
        # follows the transcript; the stop is measured from this decision.
        decided = time.monotonic()
        held = super()._hold_for_caller()
        if held:
            self.last_barge_in_at = decided
        return held


class BenchCaller:
    def __init__(self) -> None:
        self.input = QueueAudioInput(sample_rate=SAMPLE_RATE)
        self.output = CallbackAudioOutput(sample_rate=SAMPLE_RATE, on_audio=self._hear, realtime=True)
        self.frames_at: list[float] = []  # when each agent frame was handed to this "transport"
        self.frame_seconds: list[float] = []  # and how much audio it carried
        self.speech: list[bytes] = []
        self.speech_ended_at = 0.0
        self.first_audio_after: asyncio.Future[float] | None = None
        self.final_transcripts_at: list[float] = []

    async def _hear(self, pcm: bytes) -> None:
        now = time.monotonic()
        self.frames_at.append(now)
        self.frame_seconds.append(len(pcm) / 2 / SAMPLE_RATE)
        if self.first_audio_after is not None and not self.first_audio_after.done():
            self.first_audio_after.set_result(now)

    def unplayed_at(self, moment: float) -> float:
        """Agent audio handed over before ``moment`` that a real-time listener had not heard yet."""
        playhead_end = 0.0
        for at, seconds in zip(self.frames_at, self.frame_seconds, strict=True):
            if at > moment:
                break
            playhead_end = max(playhead_end, at) + seconds
        return max(0.0, playhead_end - moment)

    def on_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        if ev.is_final:
            self.final_transcripts_at.append(time.monotonic())

    def tick(self) -> None:
        if self.speech:
            self.input.push(self.speech.pop(0))
            if not self.speech:
                self.speech_ended_at = time.monotonic()
        else:
            self.input.push(QUIET)

    def say(self) -> asyncio.Future[float]:
        """Start talking; the future resolves with the time the agent's next audio arrives."""
        self.first_audio_after = asyncio.get_running_loop().create_future()
        self.speech = list(SPEECH)
        return self.first_audio_after


async def feed(callers: list[BenchCaller], stop: asyncio.Event) -> None:
    """One real-time microphone clock for every caller, as a transport would deliver audio."""
    next_at = time.monotonic()
    while not stop.is_set():
        for caller in callers:
            caller.tick()
        next_at += CHUNK_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def watch_loop(lags: list[float], stop: asyncio.Event) -> None:
    """How late a 5 ms timer fires: the event loop's stalls as every session sees them."""
    while not stop.is_set():
        at = time.monotonic()
        await asyncio.sleep(0.005)
        lags.append(time.monotonic() - at - 0.005)


@dataclass
class Schedule:
    """Sessions greet together, then measure from ``begin``, each ``offset`` later."""

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


async def one_session(
    index: int, settings: ProviderSettings, caller: BenchCaller, turns: int, schedule: Schedule
) -> SessionResult:
    observer = StateObserver()
    conversation = TimedConversation(
        session_id=f"bench-{index}",
        config=contracts.SessionConfig(system_prompt="You are a benchmark.", max_duration_seconds=3600),
        providers=settings,
        observer=observer,
        aec_warmup_seconds=None,
    )
    await conversation.start(audio_input=caller.input, audio_output=caller.output)
    conversation.session.on("user_input_transcribed", caller.on_transcribed)
    measured: list[Turn] = []
    try:
        seen = await observer.wait_state("speaking", after=0)
        seen = await observer.wait_state("listening", after=seen)
        schedule.arrive()
        await schedule.all_ready.wait()
        await asyncio.sleep(max(0.0, schedule.begin + schedule.offset(index) - time.monotonic()))
        for _ in range(turns):
            heard = len(caller.final_transcripts_at)
            first_audio = await asyncio.wait_for(caller.say(), STATE_TIMEOUT_S)
            if len(caller.final_transcripts_at) != heard + 1:
                raise RuntimeError(f"session {index}: the reply came without exactly one transcript")
            measured.append(Turn(caller.speech_ended_at, caller.final_transcripts_at[-1], first_audio))
            seen = await observer.wait_state("listening", after=len(observer.states))
        # Barge-in: this reply is long; talk over it once it is playing.
        before_reply = len(observer.states)
        await asyncio.wait_for(caller.say(), STATE_TIMEOUT_S)
        seen = await observer.wait_state("speaking", after=before_reply)
        await asyncio.sleep(BARGE_IN_AFTER_S)
        caller.say()
        seen = await observer.wait_state("listening", after=seen)
        decided = conversation.last_barge_in_at
        stop: float | None = None
        unplayed = 0.0
        if decided is not None:
            stopped_at = observer.states[seen - 1][0]
            after = [at for at in caller.frames_at if decided <= at <= stopped_at]
            stop = after[-1] - decided if after else 0.0
            unplayed = caller.unplayed_at(decided)
    finally:
        await conversation.end(contracts.EndReason.COMPLETED)
        # The shared clock keeps ticking for the sessions still running; an open input nobody
        # reads would fill up and warn that it drops audio.
        caller.input.close()
        await caller.output.aclose()
    return SessionResult(turns=measured, barge_in_stop=stop, unplayed_at_barge_in=unplayed)


async def baseline(schedule: Schedule, turns: int) -> list[float]:
    begin = time.monotonic() + 0.1

    async def one(index: int) -> list[float]:
        await asyncio.sleep(max(0.0, begin + schedule.offset(index) - time.monotonic()))
        out = []
        for _ in range(turns):
            started = time.monotonic()
            await asyncio.sleep(INJECTED_S)
            out.append(time.monotonic() - started - INJECTED_S)
        return out

    results = await asyncio.gather(*(one(i) for i in range(schedule.sessions)))
    return [x for r in results for x in r]


@dataclass(frozen=True)
class FakeLoad:
    """What serving the sessions cost a fake's process: a busy fake's own queueing shows up in
    every latency the bench measures, so it is printed beside them."""

    cpu_share: float  # CPU seconds per wall second over its whole run
    loop_lag_p99: float


def serve_sarvam(conn: Connection) -> None:
    """Child process: the Sarvam STT/TTS fake until the parent says stop; then its load and any
    protocol violations."""
    sarvam = FakeSarvam(api_key=SARVAM_KEY)
    sarvam.transcript_delay_s = STT_TRANSCRIPT_DELAY_S
    sarvam.first_audio_delay_s = TTS_FIRST_AUDIO_S
    sarvam.default_transcript = "when do you open"
    with sarvam:
        conn.send((sarvam.http_url, sarvam.ws_url))
        load = _serve_until_stopped(conn, sarvam.loop)
        conn.send((load, list(sarvam.violations)))


def serve_chat(conn: Connection, turns: int) -> None:
    """Child process: the OpenAI-compatible chat fake until the parent says stop; then its load.

    Each fake has a process of its own: in one process their two loops' threads took turns at
    the GIL, and the wait for it was counted as the pipeline's."""
    # A barge-in abandons its LLM stream mid-reply; the fake's write to the closed socket is expected.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    chat = FakeChatServer(api_key=CLARIFAI_PAT)
    chat.first_token_delay_s = LLM_FIRST_TOKEN_S
    chat.reply_with(functools.partial(_reply, turns=turns))
    with chat:
        conn.send(chat.base_url("/v2/ext/openai/v1"))
        conn.send(_serve_until_stopped(conn, chat.loop))


def _serve_until_stopped(conn: Connection, loop: asyncio.AbstractEventLoop) -> FakeLoad:
    logging.basicConfig(level=logging.ERROR)
    lags: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.run_coroutine_threadsafe(watch_loop(lags, stop), loop)
    cpu, wall = time.process_time(), time.monotonic()
    conn.recv()
    share = (time.process_time() - cpu) / (time.monotonic() - wall)
    loop.call_soon_threadsafe(stop.set)
    watcher.result(timeout=5)
    return FakeLoad(cpu_share=share, loop_lag_p99=pct(lags, 0.99))


def _reply(request: ChatRequest, *, turns: int) -> str:
    # The greeting has no user message and the measured turns follow; the one after them is cut off.
    user_turns = sum(1 for m in request.messages if m.get("role") == "user")
    return LONG_REPLY if user_turns == turns + 1 else SHORT_REPLY


@dataclass
class Collections:
    """The collector's passes while it is ``watching``: how long each stopped the loop, by generation."""

    pauses: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: [], 2: []})
    watching: bool = False
    _began: float | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            if self.watching:
                self.pauses[info["generation"]].append(time.perf_counter() - self._began)
            self._began = None

    @property
    def total(self) -> float:
        return sum(sum(p) for p in self.pauses.values())

    @property
    def longest(self) -> float:
        return max((max(p, default=0.0) for p in self.pauses.values()), default=0.0)


@dataclass
class Figures:
    overhead: list[float]
    stt_leg: list[float]
    reply_leg: list[float]
    baseline: list[float]
    barge_in_stop: list[float]
    unplayed_at_barge_in: list[float]
    barge_ins_missed: int
    loop_lag: list[float]
    cpu_share: float  # this process's CPU seconds per wall second while the sessions ran
    sarvam_load: FakeLoad
    chat_load: FakeLoad
    collections: Collections = field(default_factory=Collections)  # none watched: a peer's figures


@dataclass
class Fakes:
    """The running fakes' addresses; their loads once ``serve_fakes`` has stopped them."""

    sarvam_http: str
    sarvam_ws: str
    chat_base: str
    sarvam_load: FakeLoad | None = None
    chat_load: FakeLoad | None = None


@contextlib.asynccontextmanager
async def serve_fakes(turns: int) -> AsyncIterator[Fakes]:
    """The Sarvam and chat fakes, each in a child process, for one run of ``turns`` measured turns.

    Raises if a client broke the Sarvam protocol during the run."""
    spawn = multiprocessing.get_context("spawn")
    sarvam_conn, sarvam_child = spawn.Pipe()
    chat_conn, chat_child = spawn.Pipe()
    processes = [
        spawn.Process(target=serve_sarvam, args=(sarvam_child,), name="bench-sarvam", daemon=True),
        spawn.Process(target=serve_chat, args=(chat_child, turns), name="bench-chat", daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        sarvam_http, sarvam_ws = await asyncio.to_thread(sarvam_conn.recv)
        chat_base = await asyncio.to_thread(chat_conn.recv)
        fakes = Fakes(sarvam_http=sarvam_http, sarvam_ws=sarvam_ws, chat_base=chat_base)
        yield fakes
        sarvam_conn.send("stop")
        chat_conn.send("stop")
        fakes.sarvam_load, violations = await asyncio.to_thread(sarvam_conn.recv)
        fakes.chat_load = await asyncio.to_thread(chat_conn.recv)
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.terminate()
    if violations:
        raise RuntimeError(f"the clients broke the Sarvam protocol: {violations[:3]}")


async def run(sessions: int, turns: int, spread_s: float) -> Figures:
    async with serve_fakes(turns) as fakes:
        settings = ProviderSettings(
            speech_providers=SpeechMode.REAL,
            sarvam_api_key=SARVAM_KEY,
            sarvam_base_url=fakes.sarvam_http,
            sarvam_ws_url=fakes.sarvam_ws,
            clarifai_pat=CLARIFAI_PAT,
            clarifai_base_url=fakes.chat_base,
        )
        callers = [BenchCaller() for _ in range(sessions)]
        schedule = Schedule(sessions=sessions, spread_s=spread_s)
        stop, measuring = asyncio.Event(), asyncio.Event()
        lags: list[float] = []
        collections = Collections()
        gc.callbacks.append(collections)
        feeder = asyncio.create_task(feed(callers, stop))
        watcher = asyncio.create_task(_watch_after(schedule, lags, measuring, collections))
        try:
            results = await asyncio.gather(
                *(one_session(i, settings, caller, turns, schedule) for i, caller in enumerate(callers))
            )
        finally:
            stop.set()
            measuring.set()
            await feeder
            gc.callbacks.remove(collections)
        cpu_share = await watcher
        base = await baseline(schedule, turns)
    assert fakes.sarvam_load is not None and fakes.chat_load is not None
    all_turns = [t for r in results for t in r.turns]
    return Figures(
        overhead=[t.first_audio_at - t.speech_ended_at - INJECTED_S for t in all_turns],
        stt_leg=[t.transcript_at - t.speech_ended_at - STT_INJECTED_S for t in all_turns],
        reply_leg=[t.first_audio_at - t.transcript_at - REPLY_INJECTED_S for t in all_turns],
        baseline=base,
        barge_in_stop=[r.barge_in_stop for r in results if r.barge_in_stop is not None],
        unplayed_at_barge_in=[r.unplayed_at_barge_in for r in results if r.barge_in_stop is not None],
        barge_ins_missed=sum(1 for r in results if r.barge_in_stop is None),
        loop_lag=lags,
        cpu_share=cpu_share,
        sarvam_load=fakes.sarvam_load,
        chat_load=fakes.chat_load,
        collections=collections,
    )


async def _watch_after(schedule: Schedule, lags: list[float], done: asyncio.Event, collections: Collections) -> float:
    """Loop lag, collections and CPU share from the first measured turn (session start-up
    excluded) to the end."""
    await schedule.all_ready.wait()
    collections.watching = True
    cpu, wall = time.process_time(), time.monotonic()
    await watch_loop(lags, done)
    collections.watching = False
    return (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def p50_p95(values: list[float]) -> str:
    return f"{ms(pct(values, 0.5)):>7} {ms(pct(values, 0.95)):>7}"


MAIN_HEADER = (
    f"{'':>24} {'overhead':>15} {'baseline':>15} {'p95 vs':>9} {'barge-in stop':>15} {'CPU per':>8}",
    f"{'sessions':>8} {'heap':>8} {'turns':>6} {'p50':>7} {'p95':>7} {'p50':>7} {'p95':>7} {'baseline':>9}"
    f" {'p50':>7} {'p95':>7} {'session':>8}",
)
DIAGNOSTICS_HEADER = (
    f"{'':>17} {'STT leg':>15} {'reply leg':>15} {'barge-in tail':>15} {'loop lag':>15} {'CPU':>7}"
    f" {'collector':>21} {'Sarvam fake':>13} {'chat fake':>13}",
    f"{'sessions':>8} {'heap':>8} {'p50':>7} {'p95':>7} {'p50':>7} {'p95':>7} {'p50':>7} {'p95':>7} {'p99':>7}"
    f" {'max':>7} {'':>7} {'full':>5} {'all ms':>7} {'max':>7} {'CPU':>5} {'lag99':>7} {'CPU':>5} {'lag99':>7}",
)


def main_row(sessions: int, heap_mode: str, f: Figures) -> str:
    base_p95 = pct(f.baseline, 0.95)
    ratio = pct(f.overhead, 0.95) / base_p95 if base_p95 > 0 else math.inf
    row = (
        f"{sessions:>8} {heap_mode:>8} {len(f.overhead):>6} {p50_p95(f.overhead)} {p50_p95(f.baseline)}"
        f" {ratio:>8.0f}x {p50_p95(f.barge_in_stop)} {f.cpu_share / sessions * 100:>7.2f}%"
    )
    if f.barge_ins_missed:
        row += f"  ({f.barge_ins_missed} of {sessions} sessions did not stop when the caller talked over the agent)"
    return row


def diagnostics_row(sessions: int, heap_mode: str, f: Figures) -> str:
    return (
        f"{sessions:>8} {heap_mode:>8} {p50_p95(f.stt_leg)} {p50_p95(f.reply_leg)} {p50_p95(f.unplayed_at_barge_in)}"
        f" {ms(pct(f.loop_lag, 0.99)):>7} {ms(max(f.loop_lag, default=math.nan)):>7}"
        f" {f.cpu_share * 100:>6.0f}% {len(f.collections.pauses[2]):>5} {ms(f.collections.total):>7}"
        f" {ms(f.collections.longest):>7} {fake_load(f.sarvam_load)} {fake_load(f.chat_load)}"
    )


def fake_load(load: FakeLoad) -> str:
    return f"{load.cpu_share * 100:>4.0f}% {ms(load.loop_lag_p99):>7}"


# CPython's own collector settings (3.11's defaults), for the stock side of the A/B.
STOCK_THRESHOLDS = (700, 10, 10)


def use_heap(mode: str) -> None:
    """Set the collector up as ``mode`` says before a run; ``both`` switches it within one process."""
    gc.unfreeze()
    if mode == "settled":
        heap.settle_after_startup()  # as the Daphne server and the agent worker's job processes do
    else:
        gc.collect()  # the previous run's garbage is not this run's
        gc.set_threshold(*STOCK_THRESHOLDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,50", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=5, help="measured turns per session")
    parser.add_argument(
        "--spread", type=float, default=1.0, help="seconds over which sessions' first turns are spread (0: lockstep)"
    )
    parser.add_argument(
        "--heap",
        choices=("settled", "stock", "both"),
        default="settled",
        help="the servers' collector settings (agent_worker.heap), CPython's, or each level with both",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    modes = ("stock", "settled") if args.heap == "both" else (args.heap,)
    print(
        f"injected provider latency per turn: {INJECTED_S * 1000:.0f} ms (STT end-of-speech"
        f" {STT_END_SILENCE_S * 1000:.0f} + transcript {STT_TRANSCRIPT_DELAY_S * 1000:.0f}"
        f" + LLM TTFT {LLM_FIRST_TOKEN_S * 1000:.0f} + TTS first audio {TTS_FIRST_AUDIO_S * 1000:.0f});"
        f" turns spread over {args.spread:g} s; times in ms; CPU per session in % of one core"
    )
    print(*MAIN_HEADER, sep="\n")
    measured: list[tuple[int, str, Figures]] = []
    for level in (int(x) for x in args.sessions.split(",")):
        for mode in modes:
            use_heap(mode)
            figures = asyncio.run(run(level, args.turns, args.spread))
            measured.append((level, mode, figures))
            print(main_row(level, mode, figures), flush=True)
    print()
    print(*DIAGNOSTICS_HEADER, sep="\n")
    for level, mode, figures in measured:
        print(diagnostics_row(level, mode, figures))


if __name__ == "__main__":
    main()
