"""The LiveKit server fake, driven by the official ``livekit-api`` client (RoomService,
AgentDispatchService) and checked with its ``TokenVerifier`` on the tokens our platform mints.

The client is the source for the wire format (Twirp paths, protobuf bodies, the Bearer JWT and
its grants); livekit-server's config-sample.yaml is the source for the room defaults the fake
fills in. A fake that drifted from either fails here first.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from livekit import api

from agent_worker import contracts, sealing
from testsupport.fakes.livekit_server import DEFAULT_DEPARTURE_TIMEOUT_S, DEFAULT_EMPTY_TIMEOUT_S, FakeLiveKitServer
from voice import livekit as voice_livekit


def lk_client(server: FakeLiveKitServer, *, secret: str | None = None) -> api.LiveKitAPI:
    return api.LiveKitAPI(url=server.url, api_key=server.api_key, api_secret=secret or server.api_secret)


async def test_room_create_list_delete_with_the_fields_the_server_fills(livekit_server: FakeLiveKitServer) -> None:
    before_ms = int(time.time() * 1000)
    async with lk_client(livekit_server) as lk:
        created = await lk.room.create_room(api.CreateRoomRequest(name="cm_contract", metadata='{"a": 1}'))
        timed = await lk.room.create_room(api.CreateRoomRequest(name="cm_timed", empty_timeout=30))
        again = await lk.room.create_room(api.CreateRoomRequest(name="cm_contract"))
        listed = await lk.room.list_rooms(api.ListRoomsRequest())
        only = await lk.room.list_rooms(api.ListRoomsRequest(names=["cm_timed"]))
        await lk.room.delete_room(api.DeleteRoomRequest(room="cm_contract"))
        after_delete = await lk.room.list_rooms(api.ListRoomsRequest())
        with pytest.raises(api.TwirpError) as missing:
            await lk.room.delete_room(api.DeleteRoomRequest(room="cm_contract"))

    assert created.sid.startswith("RM_") and len(created.sid) > 3
    assert created.name == "cm_contract" and created.metadata == '{"a": 1}'
    assert before_ms // 1000 <= created.creation_time <= int(time.time())
    assert created.creation_time_ms // 1000 == created.creation_time
    assert (created.empty_timeout, created.departure_timeout) == (DEFAULT_EMPTY_TIMEOUT_S, DEFAULT_DEPARTURE_TIMEOUT_S)
    assert timed.empty_timeout == 30
    assert again.sid == created.sid  # creating an existing room answers that room
    assert {r.name: r.sid for r in listed.rooms} == {"cm_contract": created.sid, "cm_timed": timed.sid}
    assert [r.name for r in only.rooms] == ["cm_timed"]
    assert [r.name for r in after_delete.rooms] == ["cm_timed"]
    assert missing.value.code == api.TwirpErrorCode.NOT_FOUND


async def test_agent_dispatch_create_reaches_the_fake_with_its_metadata(livekit_server: FakeLiveKitServer) -> None:
    async with lk_client(livekit_server) as lk:
        dispatch = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="callmissed-agent", room="cm_room", metadata='{"s": "1"}')
        )

    assert (dispatch.agent_name, dispatch.room, dispatch.metadata) == ("callmissed-agent", "cm_room", '{"s": "1"}')
    assert dispatch.id
    [call] = livekit_server.calls_to("CreateDispatch")
    assert call.grants.room_admin


async def test_a_client_with_the_wrong_secret_is_unauthenticated(livekit_server: FakeLiveKitServer) -> None:
    async with lk_client(livekit_server, secret="not-the-secret-of-this-livekit-server") as lk:
        with pytest.raises(api.TwirpError) as refused:
            await lk.room.list_rooms(api.ListRoomsRequest())

    assert refused.value.code == api.TwirpErrorCode.UNAUTHENTICATED
    assert livekit_server.calls == []


def test_token_verifier_accepts_the_participant_tokens_we_mint(settings: Any) -> None:
    session_id = uuid.uuid4()
    dispatch = contracts.DispatchMetadata.model_validate(
        {"session_id": str(session_id), "config": {"voice": "shubh", "language": "en-IN", "llm_model": "kimi-k2.5"}}
    )
    token = voice_livekit.participant_token(room_name="cm_verified", identity="caller-1", dispatch=dispatch)

    claims = api.TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(token)

    assert claims.identity == "caller-1"
    assert claims.video is not None
    assert (claims.video.room, claims.video.room_join) == ("cm_verified", True)
    assert claims.video.can_publish and claims.video.can_subscribe and not claims.video.room_admin
    assert claims.room_config is not None
    [agent] = claims.room_config.agents
    assert agent.agent_name == settings.LIVEKIT_AGENT_NAME
    opened = sealing.unseal(agent.metadata, secret=settings.LIVEKIT_API_SECRET)
    assert contracts.DispatchMetadata.model_validate_json(opened).session_id == dispatch.session_id
    with pytest.raises(jwt.InvalidSignatureError):  # another deployment's secret cannot verify it
        api.TokenVerifier(settings.LIVEKIT_API_KEY, "another-secret-of-32-bytes-or-more!").verify(token)
