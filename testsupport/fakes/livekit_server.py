"""A loopback fake of the LiveKit server API (Twirp over HTTP, protobuf bodies).

It checks what the real server checks — the Bearer JWT signed with the API secret and the
grant each method needs — and records every call, so tests assert on what really went over
the wire. Rooms exist once created (or listed in ``rooms``); deleting an unknown room answers
Twirp ``not_found`` like the real server.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import Message
from livekit import api
from livekit.protocol import agent_dispatch, room
from livekit.protocol import models as lk_models

# livekit-server's defaults (config-sample.yaml: room.empty_timeout, room.departure_timeout).
DEFAULT_EMPTY_TIMEOUT_S = 300
DEFAULT_DEPARTURE_TIMEOUT_S = 20
_SID_ALPHABET = string.ascii_letters + string.digits


def new_room_sid() -> str:
    return "RM_" + "".join(secrets.choice(_SID_ALPHABET) for _ in range(12))


@dataclass
class TwirpCall:
    service: str
    method: str
    request: Message
    grants: api.VideoGrants


@dataclass
class FakeLiveKitServer:
    api_key: str = "devkey"
    api_secret: str = "secret"
    rooms: set[str] = field(default_factory=set)
    calls: list[TwirpCall] = field(default_factory=list)
    fail_with_status: int | None = None  # answer every call with this HTTP status (fault injection)
    _server: ThreadingHTTPServer | None = None
    _room_info: dict[str, lk_models.Room] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._initial_rooms = frozenset(self.rooms)

    def reset(self) -> None:
        """Back to the rooms it was made with, no calls or injected failure; the server and its
        port stay, so one fake can serve many tests."""
        self.rooms.clear()
        self.rooms.update(self._initial_rooms)
        self.calls.clear()
        self.fail_with_status = None
        self._room_info.clear()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeLiveKitServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def calls_to(self, method: str) -> list[TwirpCall]:
        return [c for c in self.calls if c.method == method]

    # --- protocol --------------------------------------------------------------------------

    def _handle(self, http: BaseHTTPRequestHandler) -> None:
        body = http.rfile.read(int(http.headers.get("Content-Length", "0")))
        parts = http.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "twirp":
            return self._error(http, 404, "bad_route", f"no route {http.path}")
        service, method = parts[1].rsplit(".", 1)[-1], parts[2]
        if http.headers.get("Content-Type") != "application/protobuf":
            return self._error(http, 415, "malformed", "expected application/protobuf")
        grants = self._verify(http)
        if grants is None:
            return self._error(http, 401, "unauthenticated", "invalid token")
        if self.fail_with_status is not None:
            return self._error(http, self.fail_with_status, "internal", "injected failure")
        handler = {
            ("RoomService", "DeleteRoom"): self._delete_room,
            ("RoomService", "CreateRoom"): self._create_room,
            ("RoomService", "ListRooms"): self._list_rooms,
            ("AgentDispatchService", "CreateDispatch"): self._create_dispatch,
        }.get((service, method))
        if handler is None:
            return self._error(http, 404, "bad_route", f"{service}.{method} is not faked")
        handler(http, body, service, method, grants)

    def _verify(self, http: BaseHTTPRequestHandler) -> api.VideoGrants | None:
        auth = http.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(auth.removeprefix("Bearer "))
        except Exception:
            return None
        return claims.video

    def _delete_room(self, http: Any, body: bytes, service: str, method: str, grants: api.VideoGrants) -> None:
        req = room.DeleteRoomRequest.FromString(body)
        self.calls.append(TwirpCall(service, method, req, grants))
        if not grants.room_create:
            return self._error(http, 403, "permission_denied", "needs roomCreate")
        if req.room not in self.rooms:
            return self._error(http, 404, "not_found", "requested room does not exist")
        self.rooms.discard(req.room)
        self._room_info.pop(req.room, None)
        self._ok(http, room.DeleteRoomResponse())

    def _create_room(self, http: Any, body: bytes, service: str, method: str, grants: api.VideoGrants) -> None:
        req = room.CreateRoomRequest.FromString(body)
        self.calls.append(TwirpCall(service, method, req, grants))
        if not grants.room_create:
            return self._error(http, 403, "permission_denied", "needs roomCreate")
        if req.name not in self.rooms:
            self.rooms.add(req.name)
            self._room_info[req.name] = self._new_room(
                req.name,
                metadata=req.metadata,
                empty_timeout=req.empty_timeout,
                departure_timeout=req.departure_timeout,
                max_participants=req.max_participants,
            )
        self._ok(http, self._room(req.name))

    def _room(self, name: str) -> lk_models.Room:
        """The room's record; one added to ``rooms`` directly gets its record on first sight."""
        if name not in self._room_info:
            self._room_info[name] = self._new_room(name)
        return self._room_info[name]

    @staticmethod
    def _new_room(
        name: str, *, metadata: str = "", empty_timeout: int = 0, departure_timeout: int = 0, max_participants: int = 0
    ) -> lk_models.Room:
        now_ms = int(time.time() * 1000)
        return lk_models.Room(
            sid=new_room_sid(),
            name=name,
            metadata=metadata,
            empty_timeout=empty_timeout or DEFAULT_EMPTY_TIMEOUT_S,
            departure_timeout=departure_timeout or DEFAULT_DEPARTURE_TIMEOUT_S,
            max_participants=max_participants,
            creation_time=now_ms // 1000,
            creation_time_ms=now_ms,
        )

    def _list_rooms(self, http: Any, body: bytes, service: str, method: str, grants: api.VideoGrants) -> None:
        req = room.ListRoomsRequest.FromString(body)
        self.calls.append(TwirpCall(service, method, req, grants))
        if not grants.room_list:
            return self._error(http, 403, "permission_denied", "needs roomList")
        names = [n for n in sorted(self.rooms) if not req.names or n in req.names]
        self._ok(http, room.ListRoomsResponse(rooms=[self._room(n) for n in names]))

    def _create_dispatch(self, http: Any, body: bytes, service: str, method: str, grants: api.VideoGrants) -> None:
        req = agent_dispatch.CreateAgentDispatchRequest.FromString(body)
        self.calls.append(TwirpCall(service, method, req, grants))
        if not grants.room_admin:
            return self._error(http, 403, "permission_denied", "needs roomAdmin")
        self._ok(
            http,
            agent_dispatch.AgentDispatch(id="AD_fake", agent_name=req.agent_name, room=req.room, metadata=req.metadata),
        )

    @staticmethod
    def _ok(http: BaseHTTPRequestHandler, message: Message) -> None:
        payload = message.SerializeToString()
        http.send_response(200)
        http.send_header("Content-Type", "application/protobuf")
        http.send_header("Content-Length", str(len(payload)))
        http.end_headers()
        http.wfile.write(payload)

    @staticmethod
    def _error(http: BaseHTTPRequestHandler, status: int, code: str, msg: str) -> None:
        payload = json.dumps({"code": code, "msg": msg}).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(payload)))
        http.end_headers()
        http.wfile.write(payload)
