"""What Sarvam's streaming STT and TTS sockets have in common: the handshake, the key, and one
mapping of Sarvam's failures onto livekit's API errors (which decide what the session retries).

Both services are WebSockets on the same host (``wss://api.sarvam.ai``, overridable so tests
reach a loopback fake), authenticated by the ``api-subscription-key`` header, answering in JSON
text frames ``{"type": …, "data": {…}}`` with errors as ``{"type": "error", "data": {…, "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError

logger = logging.getLogger(__name__)

DEFAULT_WS_URL = "wss://api.sarvam.ai"
_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class SarvamSocket:
    """Opens sockets to one Sarvam service (``label`` names it in errors: "STT", "TTS") with
    one shared aiohttp session."""

    def __init__(self, *, api_key: str, ws_url: str, label: str) -> None:
        if not api_key:
            raise ValueError(f"Sarvam {label} needs an API key")
        self.ws_url = ws_url.rstrip("/")
        self._api_key = api_key
        self._label = label
        self._session: aiohttp.ClientSession | None = None

    async def connect(self, path_and_query: str, connect_timeout: float) -> aiohttp.ClientWebSocketResponse:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"api-subscription-key": self._api_key}
        url = self.ws_url + path_and_query
        try:
            return await asyncio.wait_for(self._session.ws_connect(url, headers=headers), connect_timeout)
        except aiohttp.WSServerHandshakeError as e:
            # 401/403/4xx are not retried by livekit; 429 and 5xx are.
            raise APIStatusError(
                f"Sarvam {self._label} refused the connection ({e.status})", status_code=e.status, body=e.message
            ) from None
        except TimeoutError:
            raise APITimeoutError(f"Sarvam {self._label} connection timed out") from None
        except aiohttp.ClientError as e:
            raise APIConnectionError(f"cannot reach Sarvam {self._label}: {e}") from e

    async def send(self, ws: aiohttp.ClientWebSocketResponse, message: str) -> None:
        try:
            await ws.send_str(message)
        except (ConnectionResetError, aiohttp.ClientConnectionError) as e:
            raise APIConnectionError(f"Sarvam {self._label} connection lost while sending: {e}") from e

    async def receive(self, ws: aiohttp.ClientWebSocketResponse, within: float | None = None) -> dict[str, Any] | None:
        """The next JSON object Sarvam sends, skipping frames that are not one; ``None`` once the
        socket is closed (``ws.close_code`` says how). Raises for an error frame, a failed socket,
        or (``TimeoutError``) nothing within ``within`` seconds."""
        while True:
            msg = await ws.receive(timeout=within)
            if msg.type in _CLOSED:
                return None
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise APIConnectionError(f"Sarvam {self._label} connection failed: {ws.exception()}")
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                logger.warning("ignored a malformed frame from Sarvam %s", self._label)
                continue
            if data.get("type") in ("error", "errors"):
                raise self._rejected(data)
            return data

    def closed(self, ws: aiohttp.ClientWebSocketResponse) -> APIConnectionError:
        return APIConnectionError(f"Sarvam {self._label} connection closed (code {ws.close_code})")

    def _rejected(self, data: dict[str, Any]) -> APIStatusError:
        code = body(data).get("code")
        if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
            status = int(code)
        else:
            # STT names its errors ("invalid_request_error"): the request was refused, not the
            # service broken. A bare error frame says nothing, so it may be tried again.
            status = 400 if code else 500
        # Sarvam's text can quote what the user said or what is being spoken: it stays in the
        # body, out of the message that reaches the logs.
        return APIStatusError(
            f"Sarvam {self._label} rejected the request ({code or 'error'})",
            status_code=status,
            body=data,
            request_id=str(body(data).get("request_id") or "") or None,
        )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def body(data: dict[str, Any]) -> dict[str, Any]:
    inner = data.get("data")
    return inner if isinstance(inner, dict) else {}
