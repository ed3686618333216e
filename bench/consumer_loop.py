"""CPU per message of the legacy consumer's receive loop: its own lean loop against Channels' stock one.

    .venv/bin/python -m bench.consumer_loop [--sessions 50] [--messages 500] [--rounds 6]

``bench.ws_sessions`` answers the same question end to end (``lean`` and ``stock`` rows, per
session, against the echo) but needs a machine quiet enough for the server to get the CPU it asks
for; this one measures CPU time only (``time.process_time``), so a loaded machine slows it down
without changing its answer. In one process, ``--sessions`` consumers (``VoiceAgentConsumer`` with
its handler for audio reduced to a counter, on the in-memory channel layer) each receive
``--messages`` WebSocket messages, one per event-loop turn as a socket delivers them, then a
disconnect. The consumer on its own ``__call__`` and the same consumer on
``AsyncConsumer.__call__`` (as ``bench.ws_echo`` serves it) alternate, ``--rounds`` each; the
figure is CPU µs per message, and what it comes to at 50 audio frames a second per session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callmissed.settings")
os.environ["REDIS_URL"] = ""  # the in-memory channel layer: no broker round trips in the figure

import django

django.setup()

from channels.consumer import AsyncConsumer  # noqa: E402

from voice.consumers import VoiceAgentConsumer  # noqa: E402

FRAME = bytes(640)  # 20 ms of 16 kHz PCM
FRAMES_PER_SECOND = 50


class Lean(VoiceAgentConsumer):
    received = 0

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        Lean.received += 1


class Stock(Lean):
    __call__ = AsyncConsumer.__call__


async def one_socket(consumer: type[Lean], messages: int) -> None:
    left = messages

    async def receive() -> dict[str, Any]:
        nonlocal left
        await asyncio.sleep(0)  # a socket hands over one message per turn of the loop
        left -= 1
        if left < 0:
            return {"type": "websocket.disconnect", "code": 1000}
        return {"type": "websocket.receive", "bytes": FRAME}

    async def send(message: dict[str, Any]) -> None:
        pass

    await consumer.as_asgi()({"type": "websocket", "path": "/ws/voice-agent"}, receive, send)


def measure(consumer: type[Lean], sessions: int, messages: int) -> float:
    """CPU µs per message with ``sessions`` sockets at once."""

    async def all_sockets() -> None:
        await asyncio.gather(*(one_socket(consumer, messages) for _ in range(sessions)))

    Lean.received = 0
    cpu = time.process_time()
    asyncio.run(all_sockets())
    used = time.process_time() - cpu
    assert Lean.received == sessions * messages
    return used / (sessions * messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for consumer in (Lean, Stock):  # warm-up: first-call imports and caches stay out of the figures
        measure(consumer, args.sessions, 20)
    figures: dict[str, list[float]] = {"lean": [], "stock": []}
    for round_ in range(args.rounds):
        order = [("lean", Lean), ("stock", Stock)]
        for name, consumer in order if round_ % 2 == 0 else order[::-1]:
            figures[name].append(measure(consumer, args.sessions, args.messages))
    lean, stock = (statistics.median(figures[name]) for name in ("lean", "stock"))
    per_second = args.sessions * FRAMES_PER_SECOND
    print(f"{args.sessions} sockets x {args.messages} messages, {args.rounds} rounds each, alternating")
    for name, median in (("lean", lean), ("stock", stock)):
        spread = ", ".join(f"{v:.1f}" for v in figures[name])
        print(
            f"{name:>6}: {median:6.1f} µs CPU per message (median; {spread}); "
            f"{median * per_second / 1e6:.3f} of a core at {args.sessions} sessions x {FRAMES_PER_SECOND} frames/s"
        )
    print(f"lean/stock: {lean / stock:.2f}")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
