"""The agent worker's entry point, run in-process on a fake LiveKit job (``fake_job_context``)
with test audio IO, the real Sarvam STT/TTS and chat clients against the loopback Sarvam fake,
and room deletion against the loopback LiveKit server API."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.agents.testing import fake_job_context

from agent_worker import contracts, drain, sealing
from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
from agent_worker.conversation import ConversationEnded
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from agent_worker.settings import SettingsError, WorkerSettings, load
from agent_worker.worker import SessionIO, build_server, entrypoint, prepare_job_process, run_job
from testsupport.fakes.livekit_server import FakeLiveKitServer
from testsupport.fakes.sarvam import FakeSarvam, silence, tone

RATE = 16000
KEY = "sk-worker-test"
ROOM = "cm_worker_test_room"
SESSION_ID = "0b8f3f7e-5d0c-4a8e-9d55-1f2a3b4c5d6e"
GREETING_REPLY = "Namaste! How can I help you today?"


@dataclass
class RecordingReporter:
    """In-process stand-in for EventReporter: the events the worker would send to Django."""

    events: list[contracts.WorkerEvent] = field(default_factory=list)
    closed: bool = False

    def report(self, event: contracts.WorkerEvent) -> None:
        self.events.append(event)

    async def aclose(self, within: float = 30.0) -> None:
        self.closed = True

    def of(self, kind: type[contracts.WorkerEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def lk_fake_server() -> Iterator[FakeLiveKitServer]:
    server = FakeLiveKitServer(rooms={ROOM}).start()
    yield server
    server.stop()


@pytest.fixture
def lk_server(lk_fake_server: FakeLiveKitServer) -> FakeLiveKitServer:
    lk_fake_server.reset()
    return lk_fake_server


@pytest.fixture(scope="module")
def sarvam_server() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=KEY, end_silence_ms=300, tts_ms_per_char=5) as fake:
        yield fake


@pytest.fixture
def sarvam(sarvam_server: FakeSarvam) -> FakeSarvam:
    sarvam_server.reset()
    sarvam_server.chat.script_replies(GREETING_REPLY, "It is sunny in Pune today.", "Thank you for calling, goodbye!")
    return sarvam_server


@dataclass
class Harness:
    reporter: RecordingReporter
    audio_in: QueueAudioInput
    agent_audio: bytearray
    task: asyncio.Task[ConversationEnded | None]
    room: rtc.Room
    ctx: Any = None


@pytest.fixture
def providers(sarvam: FakeSarvam) -> ProviderSettings:
    return ProviderSettings(
        speech_providers=SpeechMode.REAL,
        sarvam_api_key=KEY,
        sarvam_base_url=sarvam.http_url,
        sarvam_ws_url=sarvam.ws_url,
    )


def _settings(lk_server: FakeLiveKitServer, **overrides: Any) -> WorkerSettings:
    defaults: dict[str, Any] = {"agent_goodbye_lead_seconds": 1.0, "agent_idle_timeout_seconds": 60.0}
    return WorkerSettings(**{**defaults, **overrides})


def _metadata(**config: Any) -> str:
    defaults: dict[str, Any] = {"llm_model": "sarvam-105b", "max_duration_seconds": 60}
    dispatch = contracts.DispatchMetadata(
        session_id=SESSION_ID, config=contracts.SessionConfig(**{**defaults, **config})
    )
    return sealing.seal(dispatch.model_dump_json(), secret=WorkerSettings().livekit_api_secret)


@pytest.fixture
async def start_job(lk_server: FakeLiveKitServer, providers: ProviderSettings) -> AsyncIterator[Any]:
    harnesses: list[Harness] = []

    async def start(metadata: str, **settings: Any) -> Harness:
        reporter = RecordingReporter()
        agent_audio = bytearray()

        async def on_audio(pcm: bytes) -> None:
            agent_audio.extend(pcm)

        audio_in = QueueAudioInput(sample_rate=RATE)
        session_io = SessionIO(
            audio_input=audio_in, audio_output=CallbackAudioOutput(sample_rate=RATE, on_audio=on_audio)
        )
        room = rtc.Room()
        with fake_job_context(room=room, job_metadata=metadata) as ctx:
            ctx.job.room.name = ROOM
            task = asyncio.create_task(
                run_job(
                    ctx,
                    settings=_settings(lk_server, **settings),
                    providers=providers,
                    reporter=reporter,
                    session_io=session_io,
                )
            )
        harness = Harness(reporter, audio_in, agent_audio, task, room, ctx)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        if not harness.task.done():
            harness.task.cancel()
            await asyncio.gather(harness.task, return_exceptions=True)


async def _wait_until(condition: Any, what: str, seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def _say(harness: Harness, seconds: float = 0.6) -> None:
    """A burst of 'speech' then enough silence for the STT to end the utterance."""
    for chunk in (tone(seconds, RATE), silence(0.6, RATE)):
        for i in range(0, len(chunk), 640):
            harness.audio_in.push(chunk[i : i + 640])
            await asyncio.sleep(0.02)


@dataclass
class _Caller:
    identity: str = "user-caller"
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD


def _deleted_rooms(server: FakeLiveKitServer) -> list[Any]:
    return [c.request for c in server.calls_to("DeleteRoom")]


async def test_greets_converses_and_reports_every_final_line(
    start_job: Any, sarvam: FakeSarvam, lk_server: FakeLiveKitServer
) -> None:
    sarvam.script_transcripts("What is the weather in Pune?")
    harness = await start_job(_metadata(language="en-IN"))
    reporter = harness.reporter

    await _wait_until(lambda: reporter.of(contracts.SessionStarted), "the session to start")
    await _wait_until(lambda: any(e.role == "agent" for e in reporter.of(contracts.TranscriptSegment)), "a greeting")
    await _say(harness)
    await _wait_until(
        lambda: any("sunny" in e.text for e in reporter.of(contracts.TranscriptSegment)), "the agent's answer"
    )
    harness.room.emit("participant_disconnected", _Caller())
    ended = await asyncio.wait_for(harness.task, 30)

    assert ended is not None and ended.reason == contracts.EndReason.USER_LEFT
    started = reporter.events[0]
    assert isinstance(started, contracts.SessionStarted) and started.session_id == SESSION_ID
    assert started.providers and started.providers != "offline"

    lines = sorted(reporter.of(contracts.TranscriptSegment), key=lambda line: line.start_offset_ms)
    assert [(line.role, line.text) for line in lines] == [
        ("agent", GREETING_REPLY),  # the agent speaks first
        ("user", "What is the weather in Pune?"),
        ("agent", "It is sunny in Pune today."),
    ]
    assert lines[1].language == "en-IN"
    # The caller's words reached the LLM with the session's system prompt.
    last_request = sarvam.chat.requests[-1].messages
    assert last_request[0]["content"].startswith(contracts.DEFAULT_SYSTEM_PROMPT[:30])
    assert any(m.get("content") == "What is the weather in Pune?" for m in last_request)
    assert all(line.end_offset_ms >= line.start_offset_ms for line in lines)
    assert len({line.event_id for line in reporter.events}) == len(reporter.events)
    assert harness.agent_audio, "the agent's voice went to the audio output"

    usage = [item for event in reporter.of(contracts.UsageReported) for item in event.items]
    assert {item.component for item in usage} >= {
        contracts.UsageComponent.STT_SECONDS,
        contracts.UsageComponent.TTS_CHARACTERS,
    }

    last = reporter.events[-1]
    assert isinstance(last, contracts.SessionEnded)
    assert last.reason == contracts.EndReason.USER_LEFT and last.duration_seconds > 0
    assert len(reporter.of(contracts.SessionEnded)) == 1
    # The worker reports the end; the platform deletes the room (voice.delete_room), never the worker.
    assert _deleted_rooms(lk_server) == []
    assert sarvam.violations == []


async def test_max_duration_says_goodbye_then_ends_on_time(
    start_job: Any, sarvam: FakeSarvam, lk_server: FakeLiveKitServer
) -> None:
    # The REST API allows 30 s at least; the worker honours whatever the dispatch says.
    harness = await start_job(_metadata(max_duration_seconds=4), agent_goodbye_lead_seconds=1.5)
    ended = await asyncio.wait_for(harness.task, 60)

    assert ended is not None and ended.reason == contracts.EndReason.MAX_DURATION
    (report,) = harness.reporter.of(contracts.SessionEnded)
    assert report.reason == contracts.EndReason.MAX_DURATION
    # Ended by the limit, billed for the limit: the few ms the close takes are not the caller's.
    assert report.duration_seconds == 4.0
    agent_lines = [e for e in harness.reporter.of(contracts.TranscriptSegment) if e.role == "agent"]
    assert len(agent_lines) >= 2, "a greeting and a goodbye"
    goodbye = agent_lines[-1]
    assert goodbye.start_offset_ms <= 4000


async def test_a_worker_shutdown_ends_a_live_call_with_a_goodbye_and_reports_it(start_job: Any) -> None:
    harness = await start_job(_metadata(), agent_goodbye_lead_seconds=5.0)
    reporter = harness.reporter
    await _wait_until(lambda: any(e.role == "agent" for e in reporter.of(contracts.TranscriptSegment)), "a greeting")
    # What the job process runs once livekit-agents' drain timeout is over and it closes the job.
    await asyncio.gather(*(callback("drain timed out") for callback in harness.ctx._shutdown_callbacks))
    ended = await asyncio.wait_for(harness.task, 30)

    assert ended is not None and ended.reason == contracts.EndReason.ERROR
    (report,) = reporter.of(contracts.SessionEnded)
    assert (report.reason, report.error) == (contracts.EndReason.ERROR, drain.SHUTDOWN_MESSAGE)
    agent_lines = [e for e in reporter.of(contracts.TranscriptSegment) if e.role == "agent"]
    assert len(agent_lines) == 2, "the greeting and the goodbye"


async def test_a_deleted_room_ends_the_session_as_deleted(start_job: Any, lk_server: FakeLiveKitServer) -> None:
    harness = await start_job(_metadata())
    await _wait_until(lambda: harness.reporter.of(contracts.SessionStarted), "the session to start")
    harness.room.emit("disconnected", rtc.DisconnectReason.ROOM_DELETED)
    ended = await asyncio.wait_for(harness.task, 30)

    assert ended is not None and ended.reason == contracts.EndReason.DELETED
    assert harness.reporter.of(contracts.SessionEnded)[0].reason == contracts.EndReason.DELETED


async def test_the_start_report_names_the_room_so_the_platform_can_delete_one_it_does_not_admit(
    start_job: Any,
) -> None:
    harness = await start_job(_metadata())
    await _wait_until(lambda: harness.reporter.of(contracts.SessionStarted), "the session to start")
    (started,) = harness.reporter.of(contracts.SessionStarted)
    assert (started.session_id, started.room_name) == (SESSION_ID, ROOM)


async def test_an_agent_leaving_does_not_end_the_session_but_the_caller_does(
    start_job: Any, lk_server: FakeLiveKitServer
) -> None:
    harness = await start_job(_metadata())
    await _wait_until(lambda: harness.reporter.of(contracts.SessionStarted), "the session to start")
    harness.room.emit("participant_disconnected", _Caller(kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT))
    await asyncio.sleep(0.2)
    assert not harness.task.done()
    harness.room.emit("participant_disconnected", _Caller())
    ended = await asyncio.wait_for(harness.task, 30)
    assert ended is not None and ended.reason == contracts.EndReason.USER_LEFT


async def test_a_job_without_callmissed_metadata_is_refused(
    start_job: Any, lk_server: FakeLiveKitServer, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await start_job('{"room": "someone else\'s"}')
    assert await asyncio.wait_for(harness.task, 10) is None
    assert harness.reporter.events == []
    assert _deleted_rooms(lk_server) == []
    assert "not sealed" in caplog.text


async def test_a_dispatch_sealed_by_another_deployment_is_refused(
    start_job: Any, lk_server: FakeLiveKitServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A token minted with a LIVEKIT_API_SECRET the worker does not share starts no conversation."""
    dispatch = contracts.DispatchMetadata(session_id=SESSION_ID)
    harness = await start_job(sealing.seal(dispatch.model_dump_json(), secret="another-deployment"))
    assert await asyncio.wait_for(harness.task, 10) is None
    assert harness.reporter.events == []
    assert "LIVEKIT_API_SECRET" in caplog.text


def test_the_server_registers_for_explicit_dispatch_under_the_configured_name() -> None:
    server = build_server(WorkerSettings(livekit_agent_name="callmissed-test-agent"))
    assert server._agent_name == "callmissed-test-agent"
    # Job processes receive the entry point pickled: a closure here would fail every job.
    assert pickle.loads(pickle.dumps(server._entrypoint_fnc)) is entrypoint
    # Each job process settles its heap before its call, so start-up's objects never stall the audio.
    assert pickle.loads(pickle.dumps(server.setup_fnc)) is prepare_job_process


def test_a_settled_process_keeps_its_start_up_objects_out_of_the_collectors_way() -> None:
    probe = (
        "import gc; from agent_worker.worker import prepare_job_process; from agent_worker.heap import THRESHOLDS;"
        "prepare_job_process(None); print(gc.get_freeze_count(), gc.get_threshold() == THRESHOLDS)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    frozen, thresholds_set = out.stdout.split()
    assert int(frozen) > 100_000  # livekit-agents, aiohttp, pydantic, the provider clients
    assert thresholds_set == "True"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_start_command_runs_job_processes_and_drains_on_sigterm(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        # No LiveKit server can run here: the worker keeps retrying its registration meanwhile.
        "LIVEKIT_URL": f"ws://127.0.0.1:{_free_port()}",
        "AGENT_HTTP_PORT": str(_free_port()),
        "AGENT_METRICS_PORT": str(metrics_port := _free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "agent_worker", "start"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 120
        while b"process initialized" not in log.read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # The worker's metrics, job processes included (they write to PROMETHEUS_MULTIPROC_DIR).
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            # Observed in the job process that just initialized, served by the main process.
            assert b"lk_agents_proc_initialize_duration_seconds_count" in response.read()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = log.read_text()
    assert "draining worker" in output
    assert "error initializing process" not in output


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_AGENT_NAME", "agent-x")
    monkeypatch.setenv("AGENT_GOODBYE_LEAD_SECONDS", "3.5")
    monkeypatch.setenv("AGENT_HTTP_PORT", "")  # empty counts as unset
    monkeypatch.setenv("SPEECH_PROVIDERS", "Offline")
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://events.internal:6379/2")
    settings = load(WorkerSettings)
    assert (settings.livekit_agent_name, settings.agent_goodbye_lead_seconds) == ("agent-x", 3.5)
    assert settings.agent_http_port == 8081
    assert settings.providers.offline
    assert settings.broker_url == "redis://events.internal:6379/2"
    monkeypatch.setenv("AGENT_IDLE_TIMEOUT_SECONDS", "soon")
    with pytest.raises(SettingsError, match="AGENT_IDLE_TIMEOUT_SECONDS must be a number, got 'soon'"):
        load(WorkerSettings)
    monkeypatch.setenv("AGENT_IDLE_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("SPEECH_PROVIDERS", "real")
    monkeypatch.delenv("SARVAM_API_KEY", raising=False)
    with pytest.raises(SettingsError, match="SPEECH_PROVIDERS=real needs SARVAM_API_KEY"):
        load(WorkerSettings)


def test_the_worker_command_starts_without_django() -> None:
    code = (
        "import sys\nimport agent_worker.worker\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "agent_worker", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "start" in help_text.stdout
