"""Drain: how a process that runs conversations stops without cutting callers off mid-sentence.

On shutdown the process refuses new calls, gives live ones a bounded wait to finish by
themselves, then ends the rest with a spoken goodbye. Every process that runs conversations
uses it: each of the platform's Daphne processes, for its own legacy socket calls
(``callmissed/asgi.py`` runs it before Daphne cancels its connections), and each agent worker job
process (the job's shutdown callback, which
livekit-agents runs once its own drain timeout has passed).

The bounded wait plus the goodbye is what ``docker-compose.yml``'s ``stop_grace_period`` covers,
instead of the longest session a caller may book (an hour).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from agent_worker import contracts

if TYPE_CHECKING:
    from agent_worker.conversation import Conversation

logger = logging.getLogger(__name__)

# Shown as the session's error; the reason is ``error`` (the call did not end as the caller chose).
SHUTDOWN_MESSAGE = "The server shut down for maintenance; the call was ended with a goodbye."


class LiveConversations:
    """The conversations running in this process, and whether it still takes new ones."""

    def __init__(self) -> None:
        self._live: set[Conversation] = set()
        self.draining = False

    def add(self, conversation: Conversation) -> None:
        self._live.add(conversation)

    def discard(self, conversation: Conversation) -> None:
        self._live.discard(conversation)

    def __len__(self) -> int:
        return len(self._live)

    async def drain(self, *, wait_seconds: float) -> int:
        """Refuse new calls, wait up to ``wait_seconds`` for live ones, end the rest with a goodbye.

        Returns how many calls had to be ended."""
        self.draining = True
        live = list(self._live)
        if live:
            logger.info("Draining %d live conversation(s), waiting up to %.0f s", len(live), wait_seconds)
            waits = [asyncio.ensure_future(c.wait_ended()) for c in live]
            _, pending = await asyncio.wait(waits, timeout=wait_seconds)
            for wait in pending:
                wait.cancel()
        remaining = list(self._live)
        if remaining:
            await end_with_goodbye(remaining)
        return len(remaining)


async def end_with_goodbye(conversations: list[Conversation]) -> None:
    """End each call with a goodbye; each goodbye is bounded by the conversation's goodbye lead."""

    async def end(conversation: Conversation) -> None:
        await conversation.end(contracts.EndReason.ERROR, error=SHUTDOWN_MESSAGE, say_goodbye=True)
        # Until every observer has it: the session row is closed and the caller told why.
        await conversation.wait_ended()

    await asyncio.gather(*(end(c) for c in conversations), return_exceptions=True)


# One per process: conversations add themselves when they start and leave when they end.
LIVE = LiveConversations()
