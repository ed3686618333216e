"""One voice conversation — STT → LLM → TTS, all streaming — on a livekit-agents ``AgentSession``.

Both transports run this: the LiveKit worker passes its room, the legacy WebSocket consumer
passes ``audio_io`` adapters. The session does the streaming, turn-taking and interruption work;
this module chooses the providers, greets first, enforces the time limits, turns the session's
events into ``ConversationObserver`` calls (transcripts, states, usage deltas, errors) and ends
exactly once with a reason.

Observer calls are delivered in order from one task, so a slow observer delays only other
observer calls, never the audio, and ``on_ended`` comes after every transcript and usage delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from livekit import rtc
from livekit.agents import llm, stt, utils
from livekit.agents.metrics.usage import LLMModelUsage, ModelUsage, TTSModelUsage
from livekit.agents.voice import Agent, AgentSession, ModelSettings, io
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    ErrorEvent,
    SessionUsageUpdatedEvent,
    UserInputTranscribedEvent,
    UserStateChangedEvent,
)
from livekit.agents.voice.turn import TurnHandlingOptions

from agent_worker import contracts, drain
from agent_worker import metrics as pipeline_metrics
from agent_worker.backchannels import BackchannelGate, Backchannels, GateHooks
from agent_worker.provider_settings import ProviderSettings
from agent_worker.providers import BilledAs, Providers, build_providers, providers_label
from agent_worker.tools import SessionTools, ToolCallDone, ToolOptions

logger = logging.getLogger(__name__)

GREETING_INSTRUCTIONS = "Greet the caller in one short sentence and ask how you can help."
GOODBYE_INSTRUCTIONS = "The call's time limit is about to be reached. Say a short, friendly goodbye in one sentence."
USER_ENDED_GOODBYE_INSTRUCTIONS = "The call is ending now. Say a short, friendly goodbye in one sentence."
# How long ``end`` waits for a ``start`` still in progress before closing what exists.
_START_WAIT_SECONDS = 10.0
# Longer than the Sarvam client's own drain limit, so its final usage report is never cut off.
_STT_DRAIN_SECONDS = 7.0


@dataclass(frozen=True)
class TranscriptEvent:
    role: Literal["user", "agent", "tool"]
    text: str  # a tool line: the tool's name
    final: bool
    language: str
    start_offset_ms: int  # milliseconds since the conversation started
    end_offset_ms: int
    tool_call: contracts.ToolCallRecord | None = None  # role "tool" only

    def segment(self, session_id: str) -> contracts.TranscriptSegment:
        """This line as the event Django stores; offsets clamped so a segment never ends before
        it starts (the STT's timing can run a little behind the caller's audio)."""
        return contracts.TranscriptSegment(
            session_id=session_id,
            role=self.role,
            text=self.text,
            language=self.language,
            start_offset_ms=max(0, self.start_offset_ms),
            end_offset_ms=max(0, self.start_offset_ms, self.end_offset_ms),
            tool_call=self.tool_call,
        )


@dataclass(frozen=True)
class ConversationEnded:
    reason: contracts.EndReason
    duration_seconds: float
    turn_latencies: list[contracts.TurnLatency]
    error: str = ""

    def event(self, session_id: str) -> contracts.SessionEnded:
        """This end as the event Django records."""
        return contracts.SessionEnded(
            session_id=session_id,
            reason=self.reason,
            duration_seconds=max(0.0, self.duration_seconds),
            turn_latencies=self.turn_latencies,
            error=self.error,
        )


class ConversationObserver:
    """Subclass and override what you need; every method is a no-op by default."""

    async def on_transcript(self, event: TranscriptEvent) -> None:
        return None

    async def on_agent_state(self, state: str) -> None:
        """livekit AgentState: initializing / listening / thinking / speaking."""
        return None

    async def on_user_state(self, state: str) -> None:
        """speaking / listening / away."""
        return None

    async def on_interrupted(self) -> None:
        """The user barged in; the agent's audio was cut."""
        return None

    async def on_backchannel(self, text: str, language: str) -> None:
        """The caller acknowledged the agent ("haan", "okay") while it spoke; the agent went on.
        Not a user turn: no transcript line, nothing for the LLM."""
        return None

    async def on_usage(self, items: list[contracts.UsageItem]) -> None:
        """Incremental deltas since the previous call."""
        return None

    async def on_error(self, message: str, *, recoverable: bool) -> None:
        return None

    async def on_ended(self, ended: ConversationEnded) -> None:
        """Exactly once, after the session closed."""
        return None


class _VoiceAgent(Agent):
    """Greets first, and runs the STT so that a closing conversation can end it gracefully.

    livekit's default ``stt_node`` never ends the STT input, it cancels the stream on close, and
    the provider's last usage report (the audio sent since the previous transcript) dies with
    it. Here the caller's audio stops at ``closing``, the stream is told the input ended, drains,
    and every RECOGNITION_USAGE it reports is counted in ``stt_seconds``.
    """

    def __init__(
        self,
        *,
        instructions: str,
        stt_plugin: stt.STT,
        on_stt_usage: Callable[[], None],
        gate: BackchannelGate | None = None,
        tools: list[llm.Tool | llm.Toolset] | None = None,
    ) -> None:
        super().__init__(instructions=instructions, tools=tools or [])
        self._stt_plugin = stt_plugin
        self._on_stt_usage = on_stt_usage
        self._gate = gate
        self.closing = asyncio.Event()
        self.stt_done = asyncio.Event()
        self.stt_seconds = 0.0

    async def on_enter(self) -> None:
        # The agent speaks first: callers expect to be greeted, not to talk into silence.
        self.session.generate_reply(instructions=GREETING_INSTRUCTIONS)

    async def stt_node(
        self, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings
    ) -> AsyncGenerator[stt.SpeechEvent, None]:
        self.stt_done.clear()
        try:
            conn_options = self.session.conn_options.stt_conn_options
            async with self._stt_plugin.stream(conn_options=conn_options) as stream:

                async def forward() -> None:
                    await _push_until(audio, stream, self.closing)
                    stream.end_input()

                forwarding = asyncio.create_task(forward(), name="conversation-stt-forward")
                try:
                    async for event in stream:
                        if event.type == stt.SpeechEventType.RECOGNITION_USAGE and event.recognition_usage:
                            self.stt_seconds += event.recognition_usage.audio_duration
                            self._on_stt_usage()
                        if self._gate is None:
                            yield event
                        else:
                            for passed in self._gate.feed(event):
                                yield passed
                finally:
                    await utils.aio.cancel_and_wait(forwarding)
        finally:
            self.stt_done.set()


async def _push_until(frames: AsyncIterable[rtc.AudioFrame], stream: stt.RecognizeStream, stop: asyncio.Event) -> None:
    """Push ``frames`` into ``stream`` until they end or ``stop`` is set, whichever comes first.

    One task copies and ``stop`` cancels it: racing every 20 ms frame against ``stop`` (a task
    and an ``asyncio.wait`` per frame) cost about as much CPU as sending the audio to the STT,
    which at tens of sessions per event loop is latency for every one of them."""

    async def push_all() -> None:
        async for frame in frames:
            stream.push_frame(frame)

    if stop.is_set():
        return
    pushing = asyncio.ensure_future(push_all())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({pushing, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await utils.aio.cancel_and_wait(pushing, stopped)
    if not pushing.cancelled():
        pushing.result()  # the frames' own failure


UsageKey = tuple[contracts.UsageComponent, str, str]


class Conversation:
    def __init__(
        self,
        *,
        session_id: str,
        config: contracts.SessionConfig,
        providers: ProviderSettings,
        observer: ConversationObserver | None = None,
        sample_rate: int = 16000,
        idle_timeout_seconds: float = 120.0,
        goodbye_lead_seconds: float = 5.0,
        aec_warmup_seconds: float | None = 3.0,
        tool_options: ToolOptions | None = None,
    ) -> None:
        """``aec_warmup_seconds``: for this much of the agent's first speech the caller's audio
        is not listened to, so echo from a client whose echo canceller has not converged yet
        cannot interrupt the greeting (livekit's default); ``None`` listens from the start.
        ``tool_options``: how the config's tools are called (signing secret, SSRF allowances,
        filler); without them only the built-in ``end_call`` is offered."""
        self.session_id = session_id
        self.config = config
        self._settings = providers
        self._observer = observer or ConversationObserver()
        self._sample_rate = sample_rate
        self._idle_timeout = idle_timeout_seconds
        self._goodbye_lead = goodbye_lead_seconds
        self._aec_warmup = aec_warmup_seconds
        if config.tools and tool_options is None:
            logger.warning("Session %s: no tool options, its %d tools are not offered", session_id, len(config.tools))
        self.tools = SessionTools(
            session_id=session_id,
            config=config if tool_options is not None else config.model_copy(update={"tools": []}),
            options=tool_options or ToolOptions(signing_secret=""),
            on_call_done=self._on_tool_call_done,
            on_end_call=self._on_end_call,
        )
        try:
            self.providers_label = providers_label(config, providers)
        except ValueError:
            # Reported as the session's error when start() builds the providers.
            self.providers_label = "invalid"
        self._session: AgentSession | None = None
        self.providers: Providers | None = None
        self.ended: ConversationEnded | None = None

        self._started_wall: float | None = None  # time.time() at start, the transcript origin
        self._started_mono: float | None = None
        self._start_began = False
        self._start_done = asyncio.Event()
        self._session_running = False
        self._end_reason: contracts.EndReason | None = None
        self._end_error = ""
        self._end_goodbye = False
        self._close_task: asyncio.Task[None] | None = None
        self._agent: _VoiceAgent | None = None
        self._timers: list[asyncio.Task[None]] = []

        self._outbox: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._ended_future: asyncio.Future[ConversationEnded] | None = None

        self._agent_state = "initializing"
        self._user_speech_started_at: float | None = None
        self._user_speech_ended_at: float | None = None
        self._interrupt_reported = False
        self._held_speech_started_at: float | None = None  # a held utterance the gate let through
        self.gate: BackchannelGate | None = None
        self._turn_latencies: list[contracts.TurnLatency] = []
        self._usage_reported: dict[UsageKey, float] = {}
        self._model_usage: Sequence[ModelUsage] | None = None  # the session's totals as of its last usage event
        self._session_error = ""

    @property
    def session(self) -> AgentSession:
        """The livekit-agents session; exists once ``start`` has built the providers."""
        if self._session is None:
            raise RuntimeError("The conversation has no session yet: call start() first")
        return self._session

    # ------------------------------------------------------------------ lifecycle

    async def start(
        self,
        *,
        audio_input: io.AudioInput | None = None,
        audio_output: io.AudioOutput | None = None,
        text_output: io.TextOutput | None = None,
        room: rtc.Room | None = None,
    ) -> None:
        if self._start_began:
            raise RuntimeError("Conversation.start() may be called once")
        if room is None and (audio_input is None or audio_output is None):
            raise ValueError("start() needs a room, or both audio_input and audio_output")
        self._start_began = True
        self._ensure_dispatcher()
        drain.LIVE.add(self)
        self._started_wall = time.time()
        self._started_mono = time.monotonic()
        try:
            if self._end_reason is not None:
                return  # ended before it began (e.g. nobody joined): nothing to start
            try:
                self.providers = build_providers(self.config, self._settings, sample_rate=self._sample_rate)
            except ValueError as error:
                logger.warning("Session %s cannot run its providers: %s", self.session_id, error)
                self._start_done.set()
                await self.end(contracts.EndReason.PROVIDER_ERROR, error=str(error))
                return
            self._session = self._build_session(self.providers)
            self._wire(self._session)
            if audio_input is not None:
                self.session.input.audio = audio_input
            if audio_output is not None:
                self.session.output.audio = audio_output
            if text_output is not None:
                self.session.output.transcription = text_output
            if self.config.backchannels.enabled:
                self.gate = BackchannelGate(Backchannels.for_session(self.config), self._gate_hooks())
            agent = _VoiceAgent(
                instructions=self.config.system_prompt,
                stt_plugin=self.providers.stt,
                on_stt_usage=self._queue_stt_usage,
                gate=self.gate,
                tools=self.tools.function_tools(),
            )
            self._agent = agent
            if room is not None:
                await self.session.start(agent, room=room, record=False)
            else:
                await self.session.start(agent, record=False)
            self._session_running = True
            self._arm_timers()
        finally:
            self._start_done.set()

    def _build_session(self, providers: Providers) -> AgentSession:
        turn_handling: TurnHandlingOptions = {
            # Sarvam's server-side VAD decides when the caller stopped; no local VAD model runs.
            "turn_detection": "stt",
            # Sarvam sends END_SPEECH only after its own silence window, so waiting again here
            # would only add latency to every turn.
            "endpointing": {"min_delay": 0.0},
            # An interruption stops the agent for good. Speech over the agent that may be a
            # backchannel pauses it instead, and the gate (agent_worker/backchannels.py) resumes
            # it: livekit's own resume serves only utterances without words.
            "interruption": {"enabled": True, "resume_false_interruption": False, "min_words": 0},
            "preemptive_generation": {"enabled": True},
        }
        return AgentSession(
            stt=providers.stt,
            llm=providers.llm,
            tts=providers.tts,
            vad=None,
            turn_handling=turn_handling,
            # "away" after this long with neither side speaking: the idle end.
            user_away_timeout=self._idle_timeout,
            aec_warmup_duration=self._aec_warmup,
            # A provider that still fails after its own retries ends the session: a deaf or
            # mute agent must not keep a caller (and the meter) waiting.
            conn_options=SessionConnectOptions(max_unrecoverable_errors=0),
            # _finish_stt has drained the STT before the session closes, so no transcript is
            # still on its way: livekit's own wait for one could only time out, holding every
            # ending (and the caller's socket) for this long.
            session_close_transcript_timeout=0.0,
        )

    def _arm_timers(self) -> None:
        limit = float(self.config.max_duration_seconds)
        self._timers.append(asyncio.create_task(self._deadline(limit), name=f"deadline-{self.session_id}"))

    async def _deadline(self, limit: float) -> None:
        assert self._started_mono is not None
        goodbye_at = self._started_mono + max(0.0, limit - self._goodbye_lead)
        await asyncio.sleep(max(0.0, goodbye_at - time.monotonic()))
        if self._end_reason is None and self._session_running and self._goodbye_lead > 0:
            with contextlib.suppress(RuntimeError):
                self.session.interrupt()
                self.session.generate_reply(instructions=GOODBYE_INSTRUCTIONS, allow_interruptions=False)
        await asyncio.sleep(max(0.0, self._started_mono + limit - time.monotonic()))
        # Its own task: ending cancels this timer, which must not cancel the ending.
        asyncio.get_running_loop().create_task(self.end(contracts.EndReason.MAX_DURATION))

    async def end(self, reason: contracts.EndReason, *, error: str = "", say_goodbye: bool = False) -> None:
        """Idempotent: the first reason wins; later calls wait for the same close."""
        if self._end_reason is None:
            self._end_reason = reason
            self._end_error = error
            self._end_goodbye = say_goodbye
            self._ensure_dispatcher()
            self._close_task = asyncio.get_running_loop().create_task(self._close(), name=f"close-{self.session_id}")
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def wait_ended(self) -> ConversationEnded:
        self._ensure_dispatcher()
        assert self._ended_future is not None
        return await asyncio.shield(self._ended_future)

    async def _close(self) -> None:
        if self._start_began and not self._start_done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._start_done.wait(), timeout=_START_WAIT_SECONDS)
        for timer in self._timers:
            if timer is not asyncio.current_task():
                timer.cancel()
        if self._session_running:
            if self._end_goodbye:
                await self._say_goodbye()
            await self._finish_stt()
            try:
                await self.session.aclose()
            except Exception:
                logger.exception("Session %s did not close cleanly", self.session_id)
            self._session_running = False
            self._queue_usage()
        if self.providers is not None:
            await self._close_providers(self.providers)
        assert self._end_reason is not None
        duration = 0.0 if self._started_mono is None else time.monotonic() - self._started_mono
        if self._end_reason is contracts.EndReason.MAX_DURATION:
            # The limit is what the caller was promised and billed for; a few ms of closing are not theirs.
            duration = min(duration, float(self.config.max_duration_seconds))
        drain.LIVE.discard(self)
        self.ended = ConversationEnded(
            reason=self._end_reason,
            duration_seconds=round(duration, 3),
            turn_latencies=list(self._turn_latencies),
            error=self._end_error,
        )
        ended = self.ended
        self._deliver(lambda: self._observer.on_ended(ended))
        self._outbox.put_nowait(None)

    async def _finish_stt(self) -> None:
        """Stop the caller's audio and let the STT bill and transcribe what it already has."""
        if self._agent is None:
            return
        self._agent.closing.set()
        try:
            await asyncio.wait_for(self._agent.stt_done.wait(), timeout=_STT_DRAIN_SECONDS)
        except TimeoutError:
            logger.warning("Session %s: the STT did not finish within %.0f s", self.session_id, _STT_DRAIN_SECONDS)

    async def _close_providers(self, providers: Providers) -> None:
        # Pooled provider sockets and HTTP sessions belong to this conversation only.
        for plugin in (providers.stt, providers.llm, providers.tts):
            try:
                await plugin.aclose()
            except Exception:
                logger.exception("Closing %s failed for session %s", type(plugin).__name__, self.session_id)

    async def _say_goodbye(self) -> None:
        try:
            self.session.interrupt()
            handle = self.session.generate_reply(
                instructions=USER_ENDED_GOODBYE_INSTRUCTIONS, allow_interruptions=False
            )
            await asyncio.wait_for(handle.wait_for_playout(), timeout=max(self._goodbye_lead, 0.1))
        except (TimeoutError, RuntimeError) as error:
            logger.info("Session %s goodbye cut short: %r", self.session_id, error)

    # ------------------------------------------------------------------ observer delivery

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None:
            loop = asyncio.get_running_loop()
            self._ended_future = loop.create_future()
            self._dispatcher = loop.create_task(self._dispatch(), name=f"observer-{self.session_id}")

    def _deliver(self, call: Callable[[], Awaitable[None]]) -> None:
        self._outbox.put_nowait(call)

    async def _dispatch(self) -> None:
        while True:
            call = await self._outbox.get()
            if call is None:
                break
            try:
                await call()
            except Exception:
                # An observer's bug must not stop the conversation or swallow later events.
                logger.exception("Conversation observer failed for session %s", self.session_id)
        assert self._ended_future is not None and self.ended is not None
        if not self._ended_future.done():
            self._ended_future.set_result(self.ended)

    # ------------------------------------------------------------------ session events

    def _wire(self, session: AgentSession) -> None:
        session.on("user_input_transcribed", self._on_user_transcribed)
        session.on("conversation_item_added", self._on_item_added)
        session.on("agent_state_changed", self._on_agent_state)
        session.on("user_state_changed", self._on_user_state)
        session.on("session_usage_updated", self._on_usage_updated)
        session.on("error", self._on_error)
        session.on("close", self._on_close)

    def _offset_ms(self, wall: float) -> int:
        assert self._started_wall is not None
        return max(0, round((wall - self._started_wall) * 1000))

    def _on_user_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        if not ev.transcript.strip():
            return
        started = self._user_speech_started_at or ev.created_at
        ended = self._user_speech_ended_at
        if ended is None or ended < started:
            ended = ev.created_at  # still speaking, or the text came before the end-of-speech signal
        event = TranscriptEvent(
            role="user",
            text=ev.transcript,
            final=ev.is_final,
            language=ev.language or self.config.language,
            start_offset_ms=self._offset_ms(started),
            end_offset_ms=self._offset_ms(max(ended, started)),
        )
        if ev.is_final:
            # The next utterance starts after this one, even if no new start-of-speech arrives.
            self._user_speech_started_at = None
        self._deliver(lambda: self._observer.on_transcript(event))

    def _on_item_added(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        metrics: dict[str, Any] = dict(item.metrics or {})
        # The caller's line carries the STT stage, the agent's reply the LLM, TTS and overall ones.
        pipeline_metrics.observe_turn(metrics)
        if item.role != "assistant":
            return
        if item.interrupted and not self._interrupt_reported:
            self._interrupt_reported = True
            self._deliver(self._observer.on_interrupted)
        latency = _turn_latency(metrics)
        if latency is not None:
            self._turn_latencies.append(latency)
        text = (item.text_content or "").strip()
        if not text:
            return
        started = metrics.get("started_speaking_at") or ev.created_at
        stopped = metrics.get("stopped_speaking_at") or ev.created_at
        event = TranscriptEvent(
            role="agent",
            text=text,
            final=True,
            language=self.config.language,
            start_offset_ms=self._offset_ms(started),
            end_offset_ms=self._offset_ms(max(started, stopped)),
        )
        self._deliver(lambda: self._observer.on_transcript(event))

    def _on_agent_state(self, ev: AgentStateChangedEvent) -> None:
        self._agent_state = ev.new_state
        if ev.new_state == "speaking":
            self._interrupt_reported = False
        state = str(ev.new_state)
        self._deliver(lambda: self._observer.on_agent_state(state))

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self._user_speech_started_at = self._held_speech_started_at or ev.created_at
            self._held_speech_started_at = None
            if self._agent_state == "speaking" and not self._interrupt_reported:
                self._barge_in()
        elif ev.new_state == "listening":
            self._user_speech_ended_at = ev.created_at
        state = str(ev.new_state)
        self._deliver(lambda: self._observer.on_user_state(state))
        if ev.new_state == "away" and self._end_reason is None:
            asyncio.get_running_loop().create_task(self.end(contracts.EndReason.IDLE))

    def _barge_in(self) -> None:
        """The caller started speaking over the agent, and no backchannel pause serves (they are
        off, or the gate let the utterance through): cut the agent off now.

        With STT turn detection and no local VAD, livekit itself interrupts only once words are
        transcribed; Sarvam's start-of-speech signal comes well before that."""
        self._interrupt_agent()

    def _interrupt_agent(self) -> None:
        try:
            self.session.interrupt()
        except RuntimeError:
            return  # the session is closing
        self._interrupt_reported = True
        self._deliver(self._observer.on_interrupted)

    # ------------------------------------------------------------------ backchannels

    def _gate_hooks(self) -> GateHooks:
        return GateHooks(
            pause=self._hold_for_caller,
            resume=self._resume_after_backchannel,
            interrupt=self._interrupt_held,
            on_backchannel=self._on_backchannel,
        )

    def _hold_for_caller(self) -> bool:
        """The caller started speaking over the agent and the words may be a backchannel: pause
        the agent's audio now (what the caller hears is the agent stopping, as at a barge-in)
        and let the gate decide. False where a pause cannot serve: the utterance then goes to
        the session as before (an uninterruptible goodbye, an agent not speaking)."""
        if self._agent_state != "speaking" or self._session is None or not self._session_running:
            return False
        speech = self.session.current_speech
        output = self.session.output.audio
        if speech is None or speech.interrupted or not speech.allow_interruptions:
            return False
        if output is None or not output.can_pause:
            return False
        output.pause()
        return True

    def _resume_after_backchannel(self) -> None:
        if self._session is None:
            return
        output = self.session.output.audio
        if output is not None:
            output.resume()

    def _interrupt_held(self, started_at: float) -> None:
        self._held_speech_started_at = started_at
        if self._agent_state == "speaking" and not self._interrupt_reported:
            self._interrupt_agent()

    def _on_backchannel(self, text: str, language: str) -> None:
        language = language or self.config.language
        self._deliver(lambda: self._observer.on_backchannel(text, language))

    # ------------------------------------------------------------------ tools

    def _on_tool_call_done(self, done: ToolCallDone) -> None:
        if self._started_wall is None:
            return
        event = TranscriptEvent(
            role="tool",
            text=done.record.name,
            final=True,
            language="",
            start_offset_ms=self._offset_ms(done.started_at),
            end_offset_ms=self._offset_ms(max(done.started_at, done.ended_at)),
            tool_call=done.record,
        )
        self._deliver(lambda: self._observer.on_transcript(event))

    def _on_end_call(self) -> None:
        """The reply that called ``end_call`` (its goodbye included) is done: hang up."""
        if self._end_reason is None:
            asyncio.get_running_loop().create_task(self.end(contracts.EndReason.AGENT_HANGUP))

    def _on_usage_updated(self, ev: SessionUsageUpdatedEvent) -> None:
        # The event carries the totals the session just built; asking it again rebuilt them
        # (deep copies of every model's usage) once per metrics event of every session.
        self._model_usage = ev.usage.model_usage
        self._queue_usage(self._model_usage)

    def _queue_stt_usage(self) -> None:
        # Only the STT count changed. The session's model totals change only with a usage event,
        # which already handed them over; rebuilding them here cost deep copies per transcript.
        self._queue_usage(self._model_usage)

    def _on_error(self, ev: ErrorEvent) -> None:
        error = ev.error
        recoverable = bool(getattr(error, "recoverable", False))
        message = _describe_error(error)
        pipeline_metrics.observe_provider_error(error)
        if not recoverable:
            self._session_error = message
        self._deliver(lambda: self._observer.on_error(message, recoverable=recoverable))

    def _on_close(self, ev: CloseEvent) -> None:
        self._session_running = False
        if self._end_reason is not None:
            return
        if ev.reason is CloseReason.ERROR or ev.error is not None:
            reason = contracts.EndReason.PROVIDER_ERROR
            error = _describe_error(ev.error) if ev.error is not None else self._session_error
        elif ev.reason is CloseReason.PARTICIPANT_DISCONNECTED:
            reason, error = contracts.EndReason.USER_LEFT, ""
        elif ev.reason is CloseReason.JOB_SHUTDOWN:
            reason, error = contracts.EndReason.ERROR, "The agent worker shut down."
        else:
            reason, error = contracts.EndReason.COMPLETED, ""
        asyncio.get_running_loop().create_task(self.end(reason, error=error))

    # ------------------------------------------------------------------ usage

    def usage_totals(self) -> list[contracts.UsageItem]:
        """Everything used so far, per component, model and provider."""
        if self.providers is None or self._session is None:
            return []
        return [
            contracts.UsageItem(component=component, model=model, provider=provider, quantity=quantity)
            for (component, model, provider), quantity in self._usage_now().items()
            if quantity > 0
        ]

    def _usage_now(self, model_usage: Sequence[ModelUsage] | None = None) -> dict[UsageKey, float]:
        assert self.providers is not None
        totals: dict[UsageKey, float] = {}

        def add(component: contracts.UsageComponent, billed: BilledAs, quantity: float) -> None:
            key = (component, billed.model, billed.provider)
            totals[key] = totals.get(key, 0.0) + quantity

        if self._agent is not None:
            add(contracts.UsageComponent.STT_SECONDS, self.providers.stt_billed_as, self._agent.stt_seconds)
        for usage in self.session.usage.model_usage if model_usage is None else model_usage:
            # STT seconds come from the agent's own count (see _VoiceAgent), which includes the
            # report a closing stream makes; the session stops listening before that.
            if isinstance(usage, TTSModelUsage):
                add(contracts.UsageComponent.TTS_CHARACTERS, self.providers.tts_billed_as, usage.characters_count)
            elif isinstance(usage, LLMModelUsage):
                add(contracts.UsageComponent.LLM_INPUT_TOKENS, self.providers.llm_billed_as, usage.input_tokens)
                add(contracts.UsageComponent.LLM_OUTPUT_TOKENS, self.providers.llm_billed_as, usage.output_tokens)
        return totals

    def _queue_usage(self, model_usage: Sequence[ModelUsage] | None = None) -> None:
        if self.providers is None or self._session is None:
            return
        deltas: list[contracts.UsageItem] = []
        for key, total in self._usage_now(model_usage).items():
            delta = total - self._usage_reported.get(key, 0.0)
            if delta <= 0:
                continue
            self._usage_reported[key] = total
            component, model, provider = key
            deltas.append(contracts.UsageItem(component=component, model=model, provider=provider, quantity=delta))
        if deltas:
            self._deliver(lambda: self._observer.on_usage(deltas))


def _turn_latency(metrics: dict[str, Any]) -> contracts.TurnLatency | None:
    """Only replies to the caller have an end of speech to measure from; the greeting has none."""
    e2e = metrics.get("e2e_latency")
    if e2e is None:
        return None

    def ms(seconds: Any) -> float | None:
        return None if seconds is None else round(float(seconds) * 1000, 1)

    return contracts.TurnLatency(
        end_of_speech_to_first_audio_ms=ms(e2e),
        llm_ttft_ms=ms(metrics.get("llm_node_ttft")),
        tts_ttfb_ms=ms(metrics.get("tts_node_ttfb")),
    )


def _describe_error(error: Any) -> str:
    """``"<llm|stt|tts> error: <cause>"`` — what the session's error reason shows."""
    kind = str(getattr(error, "type", "")).replace("_error", "").upper()
    cause = getattr(error, "error", error)
    text = str(cause) or type(cause).__name__
    return f"{kind} provider error: {text}" if kind else text
