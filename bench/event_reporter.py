"""How much the agent worker's event reporting costs, against a raw Redis LPUSH baseline.

    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python -m bench.event_reporter [events]

Both send the same transcript-segment payloads to a throwaway list in the same Redis, in the
same run, so the figures are ratios against what the machine does anyway:

* publish: events/s through ``EventReporter`` (Celery message envelope, one publisher thread)
  versus plain ``LPUSH`` of the JSON payload;
* loop stall: the longest gap seen by a 1 ms ticker on the event loop while reporting (the
  loop yields after each ``report``, as a conversation does), i.e. what reporting costs the
  conversation's audio timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

import redis

from agent_worker import contracts
from agent_worker.reporting import EventReporter


def _events(n: int) -> list[contracts.TranscriptSegment]:
    sid = str(uuid.uuid4())
    return [
        contracts.TranscriptSegment(
            session_id=sid,
            role="user" if i % 2 else "agent",
            text=f"line {i}: aaj mausam kaisa hai, aur kal ka kya haal rahega?",
            language="hi-IN",
            start_offset_ms=i * 1000,
            end_offset_ms=i * 1000 + 800,
        )
        for i in range(n)
    ]


def baseline(url: str, queue: str, events: list[contracts.TranscriptSegment]) -> float:
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for event in events:
        client.lpush(queue, json.dumps(event.model_dump(mode="json")))
    return time.perf_counter() - started


async def idle_gap(seconds: float) -> float:
    """The same ticker with nothing else running: this machine's own scheduling noise."""
    worst, last, end = 0.0, time.perf_counter(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    return worst


async def reporter(url: str, queue: str, events: list[contracts.TranscriptSegment]) -> tuple[float, float]:
    rep = EventReporter(broker_url=url, queue=queue)
    worst_gap = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst_gap
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst_gap = max(worst_gap, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    for event in events:
        rep.report(event)
        # A conversation reports between its other work, never thousands in one go; without
        # yielding, the gap would be this loop's own length, not what the reporter costs.
        await asyncio.sleep(0)
    assert await rep.flush(within=300)
    elapsed = time.perf_counter() - started
    stop = True
    await tick
    await rep.aclose()
    return elapsed, worst_gap


def main() -> None:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    events = _events(n)
    queue = f"bench-reporter-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    try:
        base = baseline(url, queue + "-raw", events)
        elapsed, gap = asyncio.run(reporter(url, queue, events))
        idle = asyncio.run(idle_gap(elapsed))
        assert client.llen(queue) == n
    finally:
        client.delete(queue, queue + "-raw")
    print(f"events: {n}")
    print(f"raw LPUSH:      {n / base:8.0f} events/s (baseline)")
    print(f"EventReporter:  {n / elapsed:8.0f} events/s = {base / elapsed:.2f}x baseline")
    print(
        f"longest event-loop gap while reporting: {gap * 1000:.1f} ms = {gap / idle:.1f}x idle ({idle * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
