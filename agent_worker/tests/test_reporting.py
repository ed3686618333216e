"""The Django-free event reporter against the real Redis broker: what lands in the queue is a
Celery message Django's worker can run, in order, and a dead broker never stops a conversation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from agent_worker import contracts
from agent_worker.reporting import EventReporter

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (the real broker)")


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"test-reporting-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def _messages(queue: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(REDIS_URL)
    raw = client.lrange(queue, 0, -1)
    # kombu LPUSHes and the worker BRPOPs: the oldest message is at the right end.
    return [json.loads(m) for m in reversed(raw)]


def _dead_broker_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@needs_redis
async def test_events_reach_the_broker_in_order_as_celery_tasks(queue: str) -> None:
    reporter = EventReporter(broker_url=REDIS_URL, queue=queue, batch_window=0)  # one task per event
    sid = str(uuid.uuid4())
    events: list[contracts.WorkerEvent] = [
        contracts.SessionStarted(session_id=sid, providers="offline"),
        contracts.TranscriptSegment(
            session_id=sid, role="agent", text="Namaste!", language="hi-IN", start_offset_ms=0, end_offset_ms=800
        ),
        contracts.UsageReported(
            session_id=sid,
            items=[contracts.UsageItem(component="tts_characters", model="bulbul:v3", provider="sarvam", quantity=8)],
        ),
        contracts.SessionEnded(session_id=sid, reason="user_left", duration_seconds=12.5),
    ]
    for event in events:
        reporter.report(event)
    assert await reporter.flush(within=30)
    await reporter.aclose()

    messages = _messages(queue)
    assert [m["headers"]["task"] for m in messages] == [
        contracts.TASK_SESSION_STARTED,
        contracts.TASK_TRANSCRIPT_SEGMENT,
        contracts.TASK_USAGE_REPORTED,
        contracts.TASK_SESSION_ENDED,
    ]
    assert [m["headers"]["id"] for m in messages] == [e.event_id for e in events]
    for message, event in zip(messages, events, strict=True):
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == []
        assert type(event).model_validate(kwargs["payload"]) == event
    assert (reporter.sent, reporter.dropped) == (4, 0)


@needs_redis
async def test_the_sessions_segments_and_usage_within_the_window_leave_as_one_batch_in_order(queue: str) -> None:
    reporter = EventReporter(broker_url=REDIS_URL, queue=queue, batch_window=30, max_batch=3)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())

    def segment(sid: str, i: int) -> contracts.TranscriptSegment:
        return contracts.TranscriptSegment(
            session_id=sid, role="user", text=f"line {i}", start_offset_ms=i * 1000, end_offset_ms=i * 1000 + 500
        )

    usage = contracts.UsageReported(
        session_id=a,
        items=[contracts.UsageItem(component="tts_characters", model="bulbul:v3", provider="sarvam", quantity=8)],
    )
    started = contracts.SessionStarted(session_id=a)
    a1, b1, a2, a3, a4 = segment(a, 1), segment(b, 1), segment(a, 2), segment(a, 3), segment(a, 4)
    ended = contracts.SessionEnded(session_id=a, reason="user_left", duration_seconds=3)
    # The third waiting event (of either session) fills a batch; a's end sends what is waiting
    # before itself; a lone segment leaves as its own task when the reporter flushes.
    for event in (started, a1, b1, a2, usage, a3, ended, a4):
        reporter.report(event)
    assert await reporter.flush(within=30)
    await reporter.aclose()

    messages = _messages(queue)
    sent = [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[1]["payload"]) for m in messages]
    assert [name for name, _ in sent] == [
        contracts.TASK_SESSION_STARTED,
        contracts.TASK_EVENT_BATCH,
        contracts.TASK_EVENT_BATCH,
        contracts.TASK_SESSION_ENDED,
        contracts.TASK_TRANSCRIPT_SEGMENT,
    ]
    both, before_end = (contracts.EventBatch.model_validate(payload) for _, payload in sent[1:3])
    assert ([s.event_id for s in both.segments], both.usage) == ([a1.event_id, b1.event_id, a2.event_id], [])
    assert ([s.event_id for s in before_end.segments], before_end.usage) == ([a3.event_id], [usage])
    assert sent[4][1]["event_id"] == a4.event_id
    assert (reporter.sent, reporter.dropped) == (8, 0)


async def test_a_dead_broker_is_retried_then_logged_and_the_loop_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = EventReporter(broker_url=_dead_broker_url(), attempts=2, first_retry_delay=0.01, connect_timeout=0.5)
    event = contracts.TranscriptSegment(
        session_id=str(uuid.uuid4()), role="user", text="hello", start_offset_ms=0, end_offset_ms=1
    )
    ticks = 0

    async def conversation() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    running = asyncio.create_task(conversation())
    with caplog.at_level(logging.WARNING, logger="agent_worker.reporting"):
        reporter.report(event)  # returns at once
        assert await reporter.flush(within=60)
    running.cancel()
    await reporter.aclose()

    assert ticks > 1  # the loop ran while the publisher thread was retrying
    assert (reporter.sent, reporter.dropped) == (0, 1)
    assert "attempt 1/2" in caplog.text
    assert f"Gave up sending {contracts.TASK_TRANSCRIPT_SEGMENT} {event.event_id}" in caplog.text
    assert "hello" not in caplog.text  # transcript text stays out of logs


@needs_redis
async def test_a_broker_that_comes_back_receives_the_event(queue: str, caplog: pytest.LogCaptureFixture) -> None:
    url = _dead_broker_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    redis_url = urlsplit(REDIS_URL)
    reporter = EventReporter(
        broker_url=f"redis://127.0.0.1:{port}{redis_url.path or '/0'}",
        queue=queue,
        attempts=50,
        first_retry_delay=0.05,
        connect_timeout=0.5,
    )
    event = contracts.SessionStarted(session_id=str(uuid.uuid4()))

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(redis_url.hostname, redis_url.port or 6379)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    with caplog.at_level(logging.WARNING, logger="agent_worker.reporting"):
        reporter.report(event)
        async with asyncio.timeout(60):
            while "attempt 1/50" not in caplog.text:
                await asyncio.sleep(0.01)
        # The broker comes back on the same address while the reporter is retrying.
        proxy = await asyncio.start_server(forward, "127.0.0.1", port)
        async with proxy:
            assert await reporter.flush(within=60)
            await reporter.aclose()

    assert (reporter.sent, reporter.dropped) == (1, 0)
    assert [m["headers"]["id"] for m in _messages(queue)] == [event.event_id]


def test_the_reporter_never_loads_django() -> None:
    code = (
        "import sys, asyncio\n"
        "from agent_worker import reporting, contracts\n"
        "r = reporting.EventReporter(broker_url='memory://')\n"
        "async def main():\n"
        "    r.report(contracts.SessionStarted(session_id='x'))\n"
        "    assert await r.flush(10)\n"
        "    await r.aclose()\n"
        "asyncio.run(main())\n"
        "print(r.sent, sorted(m for m in sys.modules if m.split('.')[0] == 'django'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert out.stdout.strip() == "1 []"
