"""Control messages to a live legacy-WebSocket session over the channel layer.

The consumer serving a session joins ``voice-session.<id>`` (or refuses the call if it cannot);
anything in Django (REST DELETE, billing, key revocation) ends that session with
``websocket_session_terminate`` after recording the end on its row. A message lost here still
stops the call: the consumer reads its row every few seconds. Only control goes this way: audio
never crosses the channel layer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from agent_worker import contracts

logger = logging.getLogger(__name__)

TERMINATE = "session.terminate"
# The layer's reads wait without a timeout (a consumer blocks on its channel, see settings): a
# frozen Redis must not hold the caller (a REST DELETE, a call being set up) for longer than this.
SEND_TIMEOUT_SECONDS = 2.0


def session_group(session_id: str) -> str:
    return f"voice-session.{session_id}"


def websocket_session_terminate(*, session_id: str, reason: str) -> None:
    """Ask the consumer holding ``session_id`` to end it with ``reason`` (an ``EndReason`` value).

    Fire and forget: a session whose socket is already gone simply has no listener. A channel
    layer that cannot be reached is logged, not raised — the caller has recorded the end, and the
    consumer's own row check stops the call within seconds."""
    contracts.EndReason(reason)  # a typo here would silently end sessions as "error"
    layer = get_channel_layer()
    if layer is None:
        logger.warning("No channel layer: cannot terminate WebSocket session %s", session_id)
        return
    try:
        async_to_sync(_group_send)(layer, session_group(session_id), {"type": TERMINATE, "reason": reason})
    except Exception:
        logger.exception("Could not send %s to WebSocket session %s", TERMINATE, session_id)


async def _group_send(layer: Any, group: str, message: dict[str, Any]) -> None:
    await asyncio.wait_for(layer.group_send(group, message), SEND_TIMEOUT_SECONDS)


async def group_join(layer: Any, group: str, channel_name: str) -> None:
    """Join a session's control group; raises ``TimeoutError`` on a frozen Redis instead of hanging."""
    await asyncio.wait_for(layer.group_add(group, channel_name), SEND_TIMEOUT_SECONDS)
