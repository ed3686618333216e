"""A caller for conversation tests: a microphone that streams real-time PCM (silence, or a tone
the fake's energy VAD hears as speech) and a speaker that records what the agent played."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from agent_worker import contracts
from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
from agent_worker.conversation import Conversation, ConversationEnded, ConversationObserver, TranscriptEvent
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam, silence, tone

SAMPLE_RATE = 16000
CHUNK_S = 0.02


@dataclass
class RecordingObserver(ConversationObserver):
    transcripts: list[TranscriptEvent] = field(default_factory=list)
    agent_states: list[str] = field(default_factory=list)
    user_states: list[str] = field(default_factory=list)
    interruptions: int = 0
    usage: list[contracts.UsageItem] = field(default_factory=list)
    errors: list[tuple[str, bool]] = field(default_factory=list)
    ended: list[ConversationEnded] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _touch(self) -> None:
        self.changed.set()

    async def on_transcript(self, event: TranscriptEvent) -> None:
        self.transcripts.append(event)
        self._touch()

    async def on_agent_state(self, state: str) -> None:
        self.agent_states.append(state)
        self._touch()

    async def on_user_state(self, state: str) -> None:
        self.user_states.append(state)
        self._touch()

    async def on_interrupted(self) -> None:
        self.interruptions += 1
        self._touch()

    async def on_usage(self, items: list[contracts.UsageItem]) -> None:
        self.usage.extend(items)
        self._touch()

    async def on_error(self, message: str, *, recoverable: bool) -> None:
        self.errors.append((message, recoverable))
        self._touch()

    async def on_ended(self, ended: ConversationEnded) -> None:
        self.ended.append(ended)
        self._touch()

    def final(self, role: str) -> list[TranscriptEvent]:
        return [t for t in self.transcripts if t.role == role and t.final]

    def usage_total(self, component: contracts.UsageComponent) -> dict[tuple[str, str], float]:
        totals: dict[tuple[str, str], float] = {}
        for item in self.usage:
            if item.component == component:
                key = (item.model, item.provider)
                totals[key] = totals.get(key, 0.0) + item.quantity
        return totals

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class Caller:
    """Streams the caller's side in real time, as a phone would: silence unless speaking."""

    def __init__(self, *, sample_rate: int = SAMPLE_RATE, realtime: bool = True) -> None:
        """``realtime=False``: the agent's audio is taken as fast as it is made, for tests of what
        is said rather than when (the caller's side still streams in real time)."""
        self.sample_rate = sample_rate
        self.audio_input = QueueAudioInput(sample_rate=sample_rate)
        self.played: list[tuple[float, bytes]] = []  # (monotonic time, pcm) the agent played
        self.audio_output = CallbackAudioOutput(sample_rate=sample_rate, on_audio=self._hear, realtime=realtime)
        self._speech: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self.heard_audio = asyncio.Event()

    async def _hear(self, pcm: bytes) -> None:
        self.played.append((time.monotonic(), pcm))
        self.heard_audio.set()

    def played_seconds(self, *, since: float = 0.0) -> float:
        return sum(len(pcm) / 2 / self.sample_rate for at, pcm in self.played if at >= since)

    def start(self) -> None:
        self._task = asyncio.create_task(self._stream())

    async def say(self, seconds: float) -> None:
        """Speak (a tone the fake VAD hears as speech) for ``seconds``; returns when it is sent."""
        await self.speak(tone(seconds, self.sample_rate))

    async def speak(self, pcm: bytes) -> None:
        """Speak ``pcm`` (16-bit mono at ``sample_rate``) in real time; returns when it is sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        step = int(self.sample_rate * CHUNK_S) * 2
        for i in range(0, len(pcm), step):
            self._speech.put_nowait(pcm[i : i + step])
        self._speech.put_nowait(b"")  # marker
        self._done = done
        await done

    async def _stream(self) -> None:
        quiet = silence(CHUNK_S, self.sample_rate)
        next_at = time.monotonic()
        while True:
            chunk = quiet
            if not self._speech.empty():
                chunk = self._speech.get_nowait()
                if not chunk:
                    if self._done is not None and not self._done.done():
                        self._done.set_result(None)
                    continue
            self.audio_input.push(chunk)
            next_at += CHUNK_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def hang_up(self) -> None:
        self.audio_input.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.audio_output.aclose()


@dataclass
class Call:
    conversation: Conversation
    caller: Caller
    observer: RecordingObserver


async def start_call(conversation: Conversation, observer: RecordingObserver, *, realtime: bool = True) -> Call:
    caller = Caller(realtime=realtime)
    caller.start()
    await conversation.start(audio_input=caller.audio_input, audio_output=caller.audio_output)
    return Call(conversation=conversation, caller=caller, observer=observer)


@pytest.fixture
async def calls() -> AsyncIterator[Callable[..., Awaitable[Call]]]:
    """Starts calls and, whatever the test did, ends and hangs them up afterwards."""
    started: list[Call] = []

    async def _start(conversation: Conversation, observer: RecordingObserver, *, realtime: bool = True) -> Call:
        call = await start_call(conversation, observer, realtime=realtime)
        started.append(call)
        return call

    yield _start
    for call in started:
        await call.conversation.end(contracts.EndReason.COMPLETED)
        await call.conversation.wait_ended()
        await call.caller.hang_up()


# A module that talks to the fakes defines ``sarvam_server`` / ``chat_server`` (module-scoped, made
# with the settings it needs); each test gets the one server back in its constructed state.
@pytest.fixture
def sarvam(sarvam_server: FakeSarvam) -> FakeSarvam:
    sarvam_server.reset()
    return sarvam_server


@pytest.fixture
def chat(chat_server: FakeChatServer) -> FakeChatServer:
    chat_server.reset()
    return chat_server
