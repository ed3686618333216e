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
words of every message's text, completion tokens the streamed pieces (reasoning, answer and
tool-call argument fragments).

What the real services do and the fake does too:

* Tool calls stream the way OpenAI's streaming reference shows them: per call a first delta
  with ``index``, ``id``, ``type: "function"`` and ``function.name`` (arguments ``""``), then
  deltas with the same ``index`` and ``function.arguments`` fragments, and ``finish_reason:
  "tool_calls"``. Non-streamed, ``message.tool_calls`` carries whole calls.
* Reasoning streams in ``reasoning_field``: ``reasoning_content`` (Moonshot, Sarvam, vLLM and
  SGLang servers) or ``reasoning`` (OpenRouter, which adds ``reasoning_details`` entries of type
  ``reasoning.text`` beside it).
* ``reasoning_mandatory_models``: a request that turns reasoning off for one of these
  (``reasoning: {enabled: false}`` or ``{effort: "none"}``) is answered 400 "Reasoning is
  mandatory for this endpoint and cannot be disabled.", as OpenRouter answers it.
* ``allowed_models``: any other model is answered 404 ``model_not_found``.

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
class ScriptedToolCall:
    """A function call the reply makes; ``arguments`` is the JSON text, streamed in fragments."""

    name: str
    arguments: str
    call_id: str = ""


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted answer; ``reasoning`` is streamed first in the reasoning field, like a
    thinking model does, and must never reach the spoken output; ``tool_calls`` follow the text."""

    text: str
    reasoning: str = ""
    tool_calls: tuple[ScriptedToolCall, ...] = ()


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


def split_arguments(arguments: str, size: int = 8) -> list[str]:
    """The fragments a tool call's JSON arguments are streamed in (providers cut them anywhere)."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


MANDATORY_REASONING_MESSAGE = "Reasoning is mandatory for this endpoint and cannot be disabled."


def turns_reasoning_off(body: Mapping[str, Any]) -> bool:
    """Whether a request uses OpenRouter's ``reasoning`` parameter to disable reasoning."""
    reasoning = body.get("reasoning")
    if reasoning is False:
        return True
    return isinstance(reasoning, dict) and (reasoning.get("enabled") is False or reasoning.get("effort") == "none")


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
    reasoning_mandatory_models: frozenset[str] = frozenset()
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

    def __post_init__(self) -> None:
        self._configured_reply = self.default_reply

    def reset(self) -> None:
        """Back to the state the constructor left (its auth, models and default reply): no
        scripts, faults, delays or records, so one server can serve many tests."""
        self.default_reply = self._configured_reply
        self.first_token_delay_s = 0.0
        self.inter_token_delay_s = 0.0
        self.requests.clear()
        self.usage_served.clear()
        self._replies.clear()
        self._reply_fn = None
        self._failures.clear()
        self._drop_after.clear()
        self._malform_after.clear()

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
        if request.model in self.reasoning_mandatory_models and turns_reasoning_off(body):
            return web.json_response(
                {"error": {"message": MANDATORY_REASONING_MESSAGE, "code": 400, "metadata": {"provider_name": None}}},
                status=400,
            )
        if self._failures:
            failure = self._failures.popleft()
            response = _error(failure.status, f"injected failure {failure.status}", "injected")
            if failure.retry_after is not None:
                response.headers["Retry-After"] = f"{failure.retry_after:g}"
            return response

        reply = self._next_reply(request)
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        calls = [(call.call_id or f"call_{completion_id}_{i}", call) for i, call in enumerate(reply.tool_calls)]
        pieces = self._pieces(reply, calls)
        usage = (count_prompt_tokens(request.messages), sum(1 for piece in pieces if piece[0] != "call"))
        if not body.get("stream"):
            self.usage_served.append(usage)
            return web.json_response(self._completion(completion_id, request.model, reply, calls, usage))
        return await self._stream(http, request, completion_id, pieces, usage)

    def _reasoning_delta(self, text: str) -> dict[str, Any]:
        delta: dict[str, Any] = {self.reasoning_field: text}
        if self.reasoning_field == "reasoning":  # OpenRouter sends the structured form beside it
            delta["reasoning_details"] = [{"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}]
        return delta

    def _pieces(self, reply: ScriptedReply, calls: list[tuple[str, ScriptedToolCall]]) -> list[tuple[str, Any]]:
        """The deltas of one reply in stream order; ``call`` opens a tool call (no completion token)."""
        pieces: list[tuple[str, Any]] = [("reasoning", self._reasoning_delta(t)) for t in split_tokens(reply.reasoning)]
        pieces += [("content", {"content": t}) for t in split_tokens(reply.text)]
        for index, (call_id, call) in enumerate(calls):
            opening = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            pieces.append(("call", {"tool_calls": [opening]}))
            pieces += [
                ("arguments", {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
                for fragment in split_arguments(call.arguments)
            ]
        return pieces

    def _completion(
        self,
        completion_id: str,
        model: str,
        reply: ScriptedReply,
        calls: list[tuple[str, ScriptedToolCall]],
        usage: tuple[int, int],
    ) -> dict[str, Any]:
        prompt, completion = usage
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.reasoning:
            message.update(self._reasoning_delta(reply.reasoning))
        if calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call_id, call in calls
            ]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

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
        pieces: list[tuple[str, Any]],
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
        for sent, (_, delta) in enumerate(pieces):
            if drop_after is not None and sent >= drop_after:
                if http.transport is not None:
                    http.transport.abort()
                return response
            if malform_after is not None and sent == malform_after:
                await send('{"id": "broken", "choices": [')
            if sent and self.inter_token_delay_s:
                await asyncio.sleep(self.inter_token_delay_s)
            await send(chunk(delta))
        calls_made = any(kind == "call" for kind, _ in pieces)
        await send(chunk({}, finish_reason="tool_calls" if calls_made else "stop"))
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
        reasoning_mandatory_models: frozenset[str] = frozenset(),
        default_reply: str = "Hello! How can I help you today?",
    ) -> None:
        super().__init__(
            auth=bearer_auth(api_key, *api_keys),
            allowed_models=allowed_models,
            reasoning_field=reasoning_field,
            reasoning_mandatory_models=reasoning_mandatory_models,
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
