"""WebSocket authentication by ``?key=cm_…`` for the legacy voice socket.

``ApiKeyQueryAuthMiddleware`` resolves the key once per connection and puts the outcome in the
scope as ``scope["key_auth"]`` (a ``WsKeyAuth``): the key and its organization, or why there is
none — missing, invalid, revoked or expired — so the consumer can accept the socket and close it
with that case's documented code (a socket closed before ``accept`` only gives the client an
HTTP 403, with no reason). Only the key resolved here identifies the caller; nothing else in the
query string is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from accounts.models import ApiKey
from accounts.selectors import InvalidApiKey, api_key_authenticate
from accounts.services import api_key_touch
from callmissed.errors import ErrorCode

KEY_PARAM = "key"
SCOPE_KEY = "key_auth"


@dataclass(frozen=True)
class WsKeyAuth:
    """A live key, or the error code and message explaining why there is none."""

    api_key: ApiKey | None
    error_code: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.api_key is not None


MISSING_KEY = WsKeyAuth(
    api_key=None,
    error_code=ErrorCode.UNAUTHENTICATED,
    message="Pass your API key as ?key=cm_… in the WebSocket URL.",
)


def key_from_query_string(query_string: bytes) -> str:
    """The ``key`` parameter, or "" when absent; a repeated parameter counts as its first value."""
    try:
        params = parse_qs(query_string.decode("latin1"), keep_blank_values=True)
    except ValueError:
        return ""
    values = params.get(KEY_PARAM) or [""]
    return values[0].strip()


def ws_key_authenticate(*, query_string: bytes) -> WsKeyAuth:
    """Resolve ``?key=`` to a live ``ApiKey`` and record its use (sync: touches the database)."""
    plaintext = key_from_query_string(query_string)
    if not plaintext:
        return MISSING_KEY
    try:
        key = api_key_authenticate(plaintext=plaintext)
    except InvalidApiKey as error:
        return WsKeyAuth(api_key=None, error_code=error.code, message=error.message)
    api_key_touch(api_key=key)
    return WsKeyAuth(api_key=key)


class ApiKeyQueryAuthMiddleware(BaseMiddleware):
    """Fills ``scope["key_auth"]`` for the inner application; never rejects on its own."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        auth = await database_sync_to_async(ws_key_authenticate)(query_string=scope.get("query_string", b""))
        return await super().__call__({**scope, SCOPE_KEY: auth}, receive, send)
