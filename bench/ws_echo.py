"""The ASGI app bench.ws_sessions serves: CallMissed's, plus a paced echo at ``ECHO_PATH`` and the
legacy consumer on Channels' stock loop at ``STOCK_LOOP_PATH``.

The echo is the baseline the legacy consumer's figures are divided by. It speaks the same
protocol to the same callers — config, binary frames, ``end`` → ``session.ended`` and close
1000 — but has no session behind it: each frame received after the config is sent straight
back, paced as ``CallbackAudioOutput`` paces agent audio (at most ``SEND_AHEAD_SECONDS`` ahead of
the listener's playhead). What it costs is Daphne, the WebSocket framing and the pacing, on the
same process, at the same moment; whatever the real consumer costs above it is the pipeline's.

``STOCK_LOOP_PATH`` serves ``VoiceAgentConsumer`` with ``AsyncConsumer.__call__`` put back, behind
the same key authentication: the A/B baseline for the consumer's own lean loop, in the same
server process and run. It exists only here, never in production's routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from agent_worker.audio_io import SEND_AHEAD_SECONDS
from bench.ws_sessions import ECHO_PATH, STOCK_LOOP_PATH
from callmissed.asgi import application as callmissed_application


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    frames: asyncio.Queue[bytes] = asyncio.Queue()
    rate = 16000

    async def play() -> None:
        play_until = 0.0
        while True:
            pcm = await frames.get()
            await send({"type": "websocket.send", "bytes": pcm})
            play_until = max(play_until, time.monotonic()) + len(pcm) / 2 / rate
            await asyncio.sleep(max(0.0, play_until - SEND_AHEAD_SECONDS - time.monotonic()))

    player: asyncio.Task[None] | None = None
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif kind == "websocket.disconnect":
                return
            elif message.get("bytes") is not None:
                if player is not None:
                    frames.put_nowait(message["bytes"])
            else:
                event = json.loads(message.get("text") or "{}")
                if event.get("type") == "config" and player is None:
                    rate = int(event.get("sample_rate", rate))
                    player = asyncio.create_task(play())
                    await send({"type": "websocket.send", "text": json.dumps({"type": "session.started"})})
                elif event.get("type") == "end":
                    if player is not None:
                        player.cancel()
                    ended = {"type": "session.ended", "reason": "completed"}
                    await send({"type": "websocket.send", "text": json.dumps(ended)})
                    await send({"type": "websocket.close", "code": 1000})
    finally:
        if player is not None:
            player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await player


# The stock-loop baseline; imported here, after callmissed.asgi has set Django up.
from channels.consumer import AsyncConsumer  # noqa: E402

from accounts.ws_auth import ApiKeyQueryAuthMiddleware  # noqa: E402
from voice.consumers import VoiceAgentConsumer  # noqa: E402


class StockLoopConsumer(VoiceAgentConsumer):
    """The legacy consumer on Channels' own receive loop (a task and an ``asyncio.wait`` per message)."""

    __call__ = AsyncConsumer.__call__


stock_loop = ApiKeyQueryAuthMiddleware(StockLoopConsumer.as_asgi())


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket" and scope["path"] == ECHO_PATH:
        await echo(scope, receive, send)
    elif scope["type"] == "websocket" and scope["path"] == STOCK_LOOP_PATH:
        await stock_loop(scope, receive, send)
    else:
        await callmissed_application(scope, receive, send)
