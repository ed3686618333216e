"""A customer's tool endpoints on loopback: what a session's ``tools[].url`` points at.

``POST /tools/<name>`` is answered as scripted for that tool (status, body, delay), after
checking the request's Standard Webhooks signature the way a customer's code would (401 when it
does not verify). Every request is recorded with its headers, parsed JSON body and arrival time.

Usage::

    async with CustomerTools(secret="whsec_…") as tools:     # or start() / reset() / stop()
        tools.answer("lookup_order", body={"status": "shipped"})
        tools.answer("slow", body="late", delay_s=3.0)
        url = tools.url("lookup_order")
        ...
        tools.requests[0].body["arguments"]
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from outbound import signing
from testsupport.fakes._loopback import LoopbackServer


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str = ""
    delay_s: float = 0.0


@dataclass(frozen=True)
class ToolRequest:
    tool: str
    headers: dict[str, str]  # names in lower case
    raw: bytes
    body: Any
    received_at: float  # time.monotonic()


@dataclass
class CustomerTools:
    secret: str
    requests: list[ToolRequest] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why signatures did not verify
    _answers: dict[str, Answer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._server = LoopbackServer(self._app)

    def reset(self) -> None:
        """No records and every tool answering 200 with an empty body, for the next test."""
        self.requests.clear()
        self.refused.clear()
        self._answers.clear()

    def answer(self, tool: str, *, status: int = 200, body: Any = "", delay_s: float = 0.0) -> None:
        """How ``tool`` answers from now on; a non-string ``body`` is sent as JSON."""
        text = body if isinstance(body, str) else json.dumps(body)
        self._answers[tool] = Answer(status=status, body=text, delay_s=delay_s)

    def url(self, tool: str) -> str:
        return f"http://127.0.0.1:{self._server.port}/tools/{tool}"

    def calls(self, tool: str) -> list[ToolRequest]:
        return [r for r in self.requests if r.tool == tool]

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tools/{tool}", self._handle)
        return app

    async def _handle(self, http: web.Request) -> web.Response:
        raw = await http.read()
        headers = {name.lower(): value for name, value in http.headers.items()}
        tool = http.match_info["tool"]
        try:
            signing.verify(secret=self.secret, headers=headers, body=raw)
        except signing.SignatureError as error:
            self.refused.append(str(error))
            return web.Response(status=401, text=f"signature refused: {error}")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(ToolRequest(tool, headers, raw, body, time.monotonic()))
        answer = self._answers.get(tool, Answer())
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return web.Response(status=answer.status, text=answer.body, content_type="application/json")

    def start(self) -> CustomerTools:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    async def __aenter__(self) -> CustomerTools:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
