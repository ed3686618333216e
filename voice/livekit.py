"""LiveKit: access tokens with explicit agent dispatch, and the server API (Twirp over HTTP).

No secret goes into a token: the browser receives a room grant and the dispatch metadata
(session id and config) sealed for the agent (``agent_worker/sealing.py``), which it cannot read."""

from __future__ import annotations

import secrets
from datetime import timedelta

import aiohttp
from asgiref.sync import async_to_sync
from django.conf import settings
from livekit import api

from agent_worker import contracts, sealing
from callmissed.errors import UpstreamError


def new_room_name() -> str:
    return f"cm_{secrets.token_urlsafe(18)}"


def server_api_url() -> str:
    if settings.LIVEKIT_API_URL:
        return str(settings.LIVEKIT_API_URL)
    url = str(settings.LIVEKIT_URL)
    return url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)


def participant_token(*, room_name: str, identity: str, dispatch: contracts.DispatchMetadata) -> str:
    ttl = timedelta(seconds=settings.LIVEKIT_TOKEN_TTL_SECONDS)
    return (
        api.AccessToken(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET)
        .with_identity(identity)
        .with_name("Caller")
        .with_ttl(ttl)
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room_name,
                can_publish=True,
                can_subscribe=True,
                can_publish_data=True,
            )
        )
        .with_room_config(
            api.RoomConfiguration(
                agents=[
                    api.RoomAgentDispatch(
                        agent_name=settings.LIVEKIT_AGENT_NAME,
                        metadata=sealing.seal(dispatch.model_dump_json(), secret=settings.LIVEKIT_API_SECRET),
                    )
                ],
            )
        )
        .to_jwt()
    )


_API_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def _delete_room(room_name: str) -> None:
    async with api.LiveKitAPI(
        url=server_api_url(),
        api_key=settings.LIVEKIT_API_KEY,
        api_secret=settings.LIVEKIT_API_SECRET,
        timeout=_API_TIMEOUT,
    ) as lk:
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
        except api.TwirpError as error:
            # A room nobody joined, or one already torn down, is what we wanted.
            if error.code != api.TwirpErrorCode.NOT_FOUND:
                raise


def room_delete(*, room_name: str) -> None:
    """Delete a room (the agent and the caller are disconnected); raises UpstreamError."""
    try:
        async_to_sync(_delete_room)(room_name)
    except (api.TwirpError, aiohttp.ClientError, TimeoutError) as error:
        raise UpstreamError(f"LiveKit could not delete the room: {error}") from error
