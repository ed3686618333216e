"""WebSocket authentication for the legacy voice socket: ``?key=cm_…`` or ``?ticket=cmt_…``.

``ApiKeyQueryAuthMiddleware`` resolves the credential once per connection and puts the outcome in
the scope as ``scope["key_auth"]`` (a ``WsKeyAuth``): the organization it acts for (and the key,
for a key), or why there is none — missing, invalid, revoked or expired — so the consumer can
accept the socket and close it with that case's documented code (a socket closed before
``accept`` only gives the client an HTTP 403, with no reason). Only the credential resolved here
identifies the caller; nothing else in the query string is trusted.

A ticket is what the dashboard's playground uses instead of a key: minted for the logged-in user
(``accounts.services.socket_ticket_create``), it is spent by this connection and cannot open
another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from accounts.models import ApiKey, Organization
from accounts.selectors import InvalidApiKey, api_key_authenticate
from accounts.services import InvalidSocketTicket, api_key_touch, socket_ticket_consume
from callmissed.errors import ErrorCode

KEY_PARAM = "key"
TICKET_PARAM = "ticket"
SCOPE_KEY = "key_auth"


@dataclass(frozen=True)
class WsKeyAuth:
    """The organization the socket acts for (through a live key, or a ticket, which has no key), or
    the error code and message explaining why there is none."""

    api_key: ApiKey | None
    error_code: ErrorCode | None = None
    message: str = ""
    organization: Organization | None = None

    @property
    def ok(self) -> bool:
        return self.organization is not None


MISSING_KEY = WsKeyAuth(
    api_key=None,
    error_code=ErrorCode.UNAUTHENTICATED,
    message="Pass your API key as ?key=cm_… in the WebSocket URL.",
)


def _query_param(query_string: bytes, name: str) -> str:
    """A query parameter, or "" when absent; a repeated parameter counts as its first value."""
    try:
        params = parse_qs(query_string.decode("latin1"), keep_blank_values=True)
    except ValueError:
        return ""
    values = params.get(name) or [""]
    return values[0].strip()


def key_from_query_string(query_string: bytes) -> str:
    return _query_param(query_string, KEY_PARAM)


def ws_key_authenticate(*, query_string: bytes) -> WsKeyAuth:
    """Resolve ``?key=`` to a live ``ApiKey`` and record its use, or spend ``?ticket=`` when no key
    is given (sync: touches the database)."""
    plaintext = key_from_query_string(query_string)
    if not plaintext:
        ticket = _query_param(query_string, TICKET_PARAM)
        return _ticket_authenticate(ticket) if ticket else MISSING_KEY
    try:
        key = api_key_authenticate(plaintext=plaintext)
    except InvalidApiKey as error:
        return WsKeyAuth(api_key=None, error_code=error.code, message=error.message)
    api_key_touch(api_key=key)
    return WsKeyAuth(api_key=key, organization=key.organization)


def _ticket_authenticate(plaintext: str) -> WsKeyAuth:
    try:
        holder = socket_ticket_consume(plaintext=plaintext)
    except InvalidSocketTicket as error:
        return WsKeyAuth(api_key=None, error_code=error.code, message=error.message)
    return WsKeyAuth(api_key=None, organization=holder.organization)


class ApiKeyQueryAuthMiddleware(BaseMiddleware):
    """Fills ``scope["key_auth"]`` for the inner application; never rejects on its own."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        auth = await database_sync_to_async(ws_key_authenticate)(query_string=scope.get("query_string", b""))
        return await super().__call__({**scope, SCOPE_KEY: auth}, receive, send)
