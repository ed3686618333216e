"""A real Daphne server on loopback for legacy-WebSocket tests, and a caller that talks to it.

``DaphneServer`` runs ``python -m callmissed.serve`` (Daphne, as in production) as a subprocess on the test
database (PostgreSQL, so both processes see committed rows) with the provider settings pointed
at the loopback fakes. ``WsCaller`` is a client on the ``websockets`` library that streams PCM in
real time like a phone (silence unless told to speak), and records every event and audio frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection, connections
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam, silence, tone
from testsupport.processes import free_port, stop_process, wait_for_listener

ROOT = Path(__file__).resolve().parents[2]
CHUNK_SECONDS = 0.02

# ``pytestmark`` of a module that serves Daphne: transactional (the Daphne process must see
# committed rows); each test's flush drops the migration-seeded prices, so ``seeded_prices``
# puts them back and usage is priced.
DAPHNE_TEST_MARKS = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("seeded_prices"),
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith("postgres"),
        reason="the Daphne subprocess must see the test database: needs a PostgreSQL DATABASE_URL",
    ),
]


def database_url_for(test_db_name: str) -> str:
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path=f"/{test_db_name}"))


def child_database_url(django_db_blocker: Any) -> str:
    """The URL a child process (Daphne, a Celery worker) reaches this run's test database on."""
    with django_db_blocker.unblock():
        return database_url_for(str(connection.settings_dict["NAME"]))


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run Django code from inside a test's event loop, on its own connection."""

    def call() -> Any:
        try:
            return fn()
        finally:
            connections.close_all()

    return asyncio.to_thread(call)


class DaphneServer:
    """``with DaphneServer(env) as server: server.ws_url(key)``; logs in ``log_path``."""

    def __init__(
        self, *, env: Mapping[str, str], log_path: Path, application: str = "callmissed.asgi:application"
    ) -> None:
        self.application = application  # a test may serve a wrapper that injects a fault
        self.port = free_port()
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "callmissed.settings_test", **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "/ws/voice-agent") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def ws_url(self, key: str | None) -> str:
        return self.url() if key is None else f"{self.url()}?key={key}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DaphneServer:
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                # As production, the image and `make run` start it (the legacy socket's limits
                # included: a larger message is refused with 1009); WEB_CONCURRENCY in ``env``
                # runs several processes behind the port.
                [sys.executable, "-m", "callmissed.serve", "--port", str(self.port), self.application],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # With several processes the supervisor listens before its children have loaded Django:
        # a served request says they have.
        if not (wait_for_listener(self.process, self.port) and self.answers_http()):
            self.stop()
            raise RuntimeError(f"Daphne did not start:\n{self.log()[-4000:]}")
        return self

    def answers_http(self, timeout: float = 120.0) -> bool:
        """Whether the server answers ``/healthz`` within ``timeout`` (false once it has exited)."""
        deadline = time.monotonic() + timeout
        while self.process is not None and self.process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=10):
                    return True
            except OSError:
                time.sleep(0.2)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> DaphneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def provider_env(sarvam: FakeSarvam, chat: FakeChatServer, *, clarifai_pat: str) -> dict[str, str]:
    """The real Sarvam and Clarifai clients, pointed at the loopback fakes."""
    return {
        "SPEECH_PROVIDERS": "real",
        "SARVAM_API_KEY": sarvam.api_key,
        "SARVAM_BASE_URL": sarvam.http_url,
        "SARVAM_WS_URL": sarvam.ws_url,
        "CLARIFAI_PAT": clarifai_pat,
        "CLARIFAI_BASE_URL": chat.base_url("/v2/ext/openai/v1"),
    }


@contextlib.contextmanager
def serve_daphne(django_db_blocker: Any, tmp_path_factory: Any, name: str, **env: str) -> Iterator[DaphneServer]:
    """A Daphne on the test database with ``env``, for a module-scoped fixture; its log's tail is
    printed afterwards, which pytest shows with -rA or on failure."""
    log = tmp_path_factory.mktemp(name) / "daphne.log"
    with DaphneServer(env={"DATABASE_URL": child_database_url(django_db_blocker), **env}, log_path=log) as daphne:
        yield daphne
    print(log.read_text(errors="replace")[-6000:])


def serve_offline_daphne(django_db_blocker: Any, tmp_path_factory: Any, name: str) -> Any:
    """``serve_daphne`` on the embedded offline providers: piper, pocketsphinx, the scripted LLM."""
    return serve_daphne(django_db_blocker, tmp_path_factory, name, SPEECH_PROVIDERS="offline", SARVAM_API_KEY="")


def config_message(**fields: Any) -> str:
    return json.dumps({"type": "config", **fields})


@dataclass
class Closed:
    code: int | None
    reason: str
    # False when the connection dropped without a close frame from the server (the client
    # reports 1006 then, a code no server sends).
    frame: bool = True


@dataclass
class WsCaller:
    """One client socket: ``events`` (JSON, in order), ``audio`` ((monotonic time, pcm) received).

    ``audio_before[i]`` is how many audio messages had arrived before event ``i``: the order in
    which one socket delivered them, which assertions use instead of arrival times."""

    ws: ClientConnection
    sample_rate: int = 16000
    events: list[dict[str, Any]] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)  # monotonic arrival time of each event
    audio_before: list[int] = field(default_factory=list)
    audio: list[tuple[float, bytes]] = field(default_factory=list)
    closed: Closed | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _speech: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _said: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, url: str, *, sample_rate: int = 16000) -> WsCaller:
        ws = await connect(url, max_size=None, open_timeout=10)
        caller = cls(ws=ws, sample_rate=sample_rate)
        caller._tasks.append(asyncio.create_task(caller._receive()))
        return caller

    async def _receive(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.audio.append((time.monotonic(), message))
                else:
                    self.events.append(json.loads(message))
                    self.event_times.append(time.monotonic())
                    self.audio_before.append(len(self.audio))
                self.changed.set()
        except ConnectionClosed:
            pass
        self.closed = Closed(
            code=self.ws.close_code, reason=self.ws.close_reason or "", frame=self.ws.protocol.close_rcvd is not None
        )
        self.changed.set()

    # ---- sending

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def configure(self, **fields: Any) -> dict[str, Any]:
        """Send the config and return the ``session.started`` event."""
        await self.ws.send(config_message(sample_rate=self.sample_rate, **fields))
        await self.wait_for(lambda: self.first("session.started") is not None or self.closed is not None)
        started = self.first("session.started")
        assert started is not None, f"no session.started: {self.events} {self.closed}"
        return started

    def start_streaming(self) -> None:
        """Stream 20 ms chunks in real time from now on: silence, or what ``say`` queued."""
        self._tasks.append(asyncio.create_task(self._stream()))

    async def _stream(self) -> None:
        quiet = silence(CHUNK_SECONDS, self.sample_rate)
        next_at = time.monotonic()
        try:
            while True:
                chunk = quiet
                if not self._speech.empty():
                    chunk = self._speech.get_nowait()
                    if not chunk:
                        self._said.set()
                        continue
                await self.ws.send(chunk)
                next_at += CHUNK_SECONDS
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except ConnectionClosed:
            return

    async def say(self, seconds: float) -> None:
        """Speak (a tone the fake's VAD hears as speech) for ``seconds``; returns once sent."""
        pcm = tone(seconds, self.sample_rate)
        step = int(self.sample_rate * CHUNK_SECONDS) * 2
        self._said.clear()
        for i in range(0, len(pcm), step):
            self._speech.put_nowait(pcm[i : i + step])
        self._speech.put_nowait(b"")
        await self._said.wait()

    def stop_streaming(self) -> None:
        for task in self._tasks[1:]:
            task.cancel()
        del self._tasks[1:]

    # ---- reading

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    def time_of(self, kind: str) -> float:
        """When the first ``kind`` event arrived (monotonic)."""
        return next(at for at, e in zip(self.event_times, self.events, strict=True) if e.get("type") == kind)

    def first(self, kind: str) -> dict[str, Any] | None:
        found = self.of(kind)
        return found[0] if found else None

    def transcripts(self, role: str, *, final: bool = True) -> list[str]:
        return [e["text"] for e in self.of("transcript") if e["role"] == role and e["final"] == final]

    def audio_seconds(self, *, since: float = 0.0) -> float:
        return sum(len(pcm) / 2 / self.sample_rate for at, pcm in self.audio if at >= since)

    def index_of(self, kind: str, *, nth: int = 0) -> int:
        """The position in ``events`` of the ``nth`` (from 0) event of ``kind``."""
        return [i for i, e in enumerate(self.events) if e.get("type") == kind][nth]

    def audio_seconds_between(self, first: int, last: int | None = None) -> float:
        """Seconds of audio that arrived after event ``first`` and before event ``last`` (or since)."""
        end = len(self.audio) if last is None else self.audio_before[last]
        return sum(len(pcm) / 2 / self.sample_rate for _, pcm in self.audio[self.audio_before[first] : end])

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out; events so far: {self.events}, closed: {self.closed}") from None

    async def wait_closed(self, *, timeout: float = 30.0) -> Closed:
        await self.wait_for(lambda: self.closed is not None, timeout=timeout)
        assert self.closed is not None
        return self.closed

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()
