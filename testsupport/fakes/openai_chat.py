"""A loopback fake of an OpenAI-compatible chat completions endpoint (Clarifai, OpenRouter, Sarvam).

It speaks the wire protocol OpenAI-compatible providers speak — ``POST …/chat/completions``
answered with Server-Sent Events of ``chat.completion.chunk`` objects, ``data: [DONE]`` at the
end, and a final usage chunk when ``stream_options.include_usage`` asks for one — so the real
client (``agent_worker/providers/openai_compat.py``) is what runs in tests.

Usage::

    async with FakeChatServer(api_key="or-key") as chat:      # or: with FakeChatServer() as chat
        chat.script_replies("Hello there.", ScriptedReply("Fine.", reasoning="let me think"))
        llm = openai.LLM(model="x", base_url=chat.base_url("/api/v1"), api_key="or-key")
        ...
        chat.requests[0].body["thinking"]      # everything the client sent is recorded
        chat.usage_served                      # [(prompt_tokens, completion_tokens), ...]

Replies: ``script_replies(*replies)`` queues replies (a ``str`` or a ``ScriptedReply``) served in
order; ``reply_with(fn)`` answers with ``fn(request)`` once the queue is empty; otherwise
``default_reply``. Token counts are deterministic: prompt tokens are the whitespace-separated
words of every message's text, completion tokens the streamed pieces (answer and reasoning).

Faults and latency (set before the request; each ``*_next`` applies to the next request only):
``first_token_delay_s``, ``inter_token_delay_s``, ``fail_next(status, times=, retry_after=)``,
``drop_next_stream(after_tokens=)`` (the connection is cut mid-body),
``malform_next_stream(after_tokens=)`` (one chunk is not JSON).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from testsupport.fakes._loopback import LoopbackServer

_TOKEN_RE = re.compile(r"\s*\S+|\s+$")


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted answer; ``reasoning`` is streamed first in the reasoning field, like a
    thinking model does, and must never reach the spoken output."""

    text: str
    reasoning: str = ""


@dataclass(frozen=True)
class ChatRequest:
    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]
    received_at: float

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None


def split_tokens(text: str) -> list[str]:
    """The pieces a reply is streamed in: each word with its leading whitespace."""
    return _TOKEN_RE.findall(text)


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


AuthCheck = Callable[[Mapping[str, str]], str | None]


@dataclass
class ChatCompletions:
    """The endpoint's behaviour and records, mountable on any aiohttp app (the Sarvam fake
    reuses it for Sarvam's chat completions)."""

    auth: AuthCheck
    allowed_models: frozenset[str] | None = None
    reasoning_field: str = "reasoning_content"
    default_reply: str = "Hello! How can I help you today?"
    first_token_delay_s: float = 0.0
    inter_token_delay_s: float = 0.0
    requests: list[ChatRequest] = field(default_factory=list)
    usage_served: list[tuple[int, int]] = field(default_factory=list)
    _replies: deque[str | ScriptedReply] = field(default_factory=deque)
    _reply_fn: Callable[[ChatRequest], str | ScriptedReply] | None = None
    _failures: deque[_Failure] = field(default_factory=deque)
    _drop_after: deque[int] = field(default_factory=deque)
    _malform_after: deque[int] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    # --- scripting ---------------------------------------------------------------------------

    def script_replies(self, *replies: str | ScriptedReply) -> None:
        self._replies.extend(replies)

    def reply_with(self, fn: Callable[[ChatRequest], str | ScriptedReply]) -> None:
        self._reply_fn = fn

    def fail_next(self, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        self._failures.extend(_Failure(status, retry_after) for _ in range(times))

    def drop_next_stream(self, *, after_tokens: int) -> None:
        self._drop_after.append(after_tokens)

    def malform_next_stream(self, *, after_tokens: int) -> None:
        self._malform_after.append(after_tokens)

    # --- protocol ----------------------------------------------------------------------------

    def _next_reply(self, request: ChatRequest) -> ScriptedReply:
        reply: str | ScriptedReply
        if self._replies:
            reply = self._replies.popleft()
        elif self._reply_fn is not None:
            reply = self._reply_fn(request)
        else:
            reply = self.default_reply
        return reply if isinstance(reply, ScriptedReply) else ScriptedReply(reply)

    async def handle(self, http: web.Request) -> web.StreamResponse:
        received_at = time.monotonic()
        denied = self.auth(http.headers)
        if denied is not None:
            return _error(401, denied, "invalid_api_key")
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_request")
        request = ChatRequest(path=http.path, headers=dict(http.headers), body=body, received_at=received_at)
        self.requests.append(request)

        problem = self._validate(body)
        if problem is not None:
            return _error(400, problem, "invalid_request")
        if self.allowed_models is not None and request.model not in self.allowed_models:
            return _error(404, f"model {request.model!r} not found", "model_not_found")
        if self._failures:
            failure = self._failures.popleft()
            response = _error(failure.status, f"injected failure {failure.status}", "injected")
            if failure.retry_after is not None:
                response.headers["Retry-After"] = f"{failure.retry_after:g}"
            return response

        reply = self._next_reply(request)
        reasoning_tokens = split_tokens(reply.reasoning)
        answer_tokens = split_tokens(reply.text)
        usage = (count_prompt_tokens(request.messages), len(reasoning_tokens) + len(answer_tokens))
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if not body.get("stream"):
            self.usage_served.append(usage)
            return web.json_response(_completion(completion_id, request.model, reply, usage))
        return await self._stream(http, request, completion_id, reasoning_tokens, answer_tokens, usage)

    @staticmethod
    def _validate(body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in {
                "system",
                "developer",
                "user",
                "assistant",
                "tool",
            }:
                return "each message needs a valid role"
        return None

    async def _stream(
        self,
        http: web.Request,
        request: ChatRequest,
        completion_id: str,
        reasoning_tokens: list[str],
        answer_tokens: list[str],
        usage: tuple[int, int],
    ) -> web.StreamResponse:
        drop_after = self._drop_after.popleft() if self._drop_after else None
        malform_after = self._malform_after.popleft() if self._malform_after else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(http)
        created = int(time.time())

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        await send(chunk({"role": "assistant", "content": ""}))
        if self.first_token_delay_s:
            await asyncio.sleep(self.first_token_delay_s)
        pieces = [(self.reasoning_field, t) for t in reasoning_tokens] + [("content", t) for t in answer_tokens]
        for sent, (key, token) in enumerate(pieces):
            if drop_after is not None and sent >= drop_after:
                if http.transport is not None:
                    http.transport.abort()
                return response
            if malform_after is not None and sent == malform_after:
                await send('{"id": "broken", "choices": [')
            if sent and self.inter_token_delay_s:
                await asyncio.sleep(self.inter_token_delay_s)
            await send(chunk({key: token}))
        await send(chunk({}, finish_reason="stop"))
        stream_options = request.body.get("stream_options") or {}
        if stream_options.get("include_usage"):
            prompt, completion = usage
            await send(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": request.model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                }
            )
        self.usage_served.append(usage)
        await send("[DONE]")
        await response.write_eof()
        return response


def _completion(completion_id: str, model: str, reply: ScriptedReply, usage: tuple[int, int]) -> dict[str, Any]:
    prompt, completion = usage
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}, status=status
    )


def bearer_auth(*api_keys: str) -> AuthCheck:
    """Accept ``Authorization: Bearer <key>`` for any of ``api_keys``."""
    accepted = {f"Bearer {k}" for k in api_keys}

    def check(headers: Mapping[str, str]) -> str | None:
        if headers.get("Authorization") in accepted:
            return None
        return "Incorrect API key provided"

    return check


class FakeChatServer(ChatCompletions):
    """OpenAI-compatible ``POST <any prefix>/chat/completions`` on a loopback port.

    ``FakeChatServer(api_key="k")`` accepts ``Authorization: Bearer k`` (pass ``api_keys=`` to
    accept several, e.g. one per routed provider). Serves every prefix Clarifai
    (``/v2/ext/openai/v1``), OpenRouter (``/api/v1``) and Sarvam (``/v1``) use; ``base_url(prefix)``
    builds the base URL a client is given and ``requests[i].path`` shows which one it hit.
    Start with ``async with``/``with``, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        api_keys: tuple[str, ...] = (),
        allowed_models: frozenset[str] | None = None,
        reasoning_field: str = "reasoning_content",
        default_reply: str = "Hello! How can I help you today?",
    ) -> None:
        super().__init__(
            auth=bearer_auth(api_key, *api_keys),
            allowed_models=allowed_models,
            reasoning_field=reasoning_field,
            default_reply=default_reply,
        )
        self._server = LoopbackServer(self._app)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{prefix:.*}chat/completions", self.handle)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The fake's own event loop, for probes that must run where its handlers run."""
        return self._server.loop

    def base_url(self, prefix: str = "/v1") -> str:
        return self.url + prefix.rstrip("/")

    def start(self) -> FakeChatServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeChatServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
