"""A streaming OpenAI-compatible chat completions client as a livekit ``llm.LLM``.

It sends what livekit's OpenAI plugin sends for our routes (``stream``, ``stream_options.
include_usage``, the chat context in OpenAI format, tools when there are any, the route's
``extra_body`` and headers) and reads the stream the way the plugin does (``delta.content``
with ``<think>`` blocks stripped, tool calls, the final usage chunk), with the same error
mapping, so livekit's retry rules apply unchanged: nothing is retried once text was streamed.

Why not the plugin: per request the ``openai`` SDK walks the whole chat context through its
typed parameter transform, and per streamed chunk builds pydantic models of it; with tens of
sessions on one event loop that was most of the loop's CPU in the LLM path, delaying every
other session's audio. Here a chunk is one ``json.loads``.

Reasoning: a route may name the request fields that turn the model's reasoning off
(``reasoning_off``). Some endpoints refuse them ("Reasoning is mandatory for this endpoint and
cannot be disabled", HTTP 400): the request is then sent once more without them, and that model
is asked without them from then on. Reasoning deltas (``reasoning_content``, OpenRouter's
``reasoning`` / ``reasoning_details``) are never spoken; when they arrive anyway the first one
is logged once per model, so a switch the host ignores shows up in the logs, not in the audio.

Sessions on one event loop share one aiohttp session (and so its connection pool and TLS
context) for as long as any of them is open: a client per session built its own SSL context
and, against a real provider, paid a TLS handshake per session instead of reusing a warm
connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlparse

import aiohttp
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    llm,
)
from livekit.agents.llm import ToolChoice
from livekit.agents.llm import utils as llm_utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import is_given

logger = logging.getLogger(__name__)

_DONE = "[DONE]"
# OpenRouter's wording (and the upstream providers' it forwards) for a model that always reasons.
_REASONING_MANDATORY = "reasoning is mandatory"
_REASONING_DELTAS = ("reasoning_content", "reasoning", "reasoning_details")


class OpenAICompatibleLLM(llm.LLM):
    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        reasoning_off: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._provider = urlparse(base_url).netloc
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            **(extra_headers or {}),
        }
        self._extra_body = dict(extra_body or {})
        self._reasoning_off = dict(reasoning_off or {})
        self._lease: _Lease | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return self._provider

    def _http(self) -> aiohttp.ClientSession:
        if self._lease is None:
            self._lease = _Lease()
        return self._lease.session

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> OpenAICompatibleStream:
        body: dict[str, Any] = {}
        headers = self._headers
        if is_given(extra_kwargs):
            extra = dict(extra_kwargs)
            body.update(extra.pop("extra_body", None) or {})
            if extra_headers := extra.pop("extra_headers", None):
                headers = {**headers, **extra_headers}
            body.update(extra)
        body.update(self._extra_body)
        if (self._provider, self._model) not in _reasoning_mandatory:
            body.update(self._reasoning_off)
        if is_given(parallel_tool_calls):
            body["parallel_tool_calls"] = parallel_tool_calls
        if tools and is_given(tool_choice):
            if isinstance(tool_choice, dict):
                body["tool_choice"] = {"type": "function", "function": {"name": tool_choice["function"]["name"]}}
            elif tool_choice in ("auto", "required", "none"):
                body["tool_choice"] = tool_choice
        return OpenAICompatibleStream(
            self,
            session=self._http(),
            url=self._url,
            headers=headers,
            body=body,
            reasoning_off=tuple(self._reasoning_off),
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
        )

    async def aclose(self) -> None:
        await super().aclose()
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await lease.release()


class OpenAICompatibleStream(llm.LLMStream):
    def __init__(
        self,
        llm_v: OpenAICompatibleLLM,
        *,
        session: aiohttp.ClientSession,
        url: str,
        headers: Mapping[str, str],
        body: dict[str, Any],
        reasoning_off: tuple[str, ...],
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(llm_v, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._session = session
        self._url = url
        self._headers = headers
        self._body = body
        self._reasoning_off = [key for key in reasoning_off if key in body]
        self._model = llm_v.model
        self._provider = llm_v.provider

    def _request_body(self) -> dict[str, Any]:
        messages, _ = self._chat_ctx.to_provider_format(format="openai")
        body: dict[str, Any] = {
            **self._body,
            "messages": messages,
            "model": self._model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self._tools:
            body["tools"] = llm.ToolContext(self._tools).parse_function_tools("openai", strict=True)
        else:
            body.pop("tool_choice", None)
        return body

    async def _run(self) -> None:
        retryable = True
        timeout = self._conn_options.timeout
        try:
            body = self._request_body()
            while True:
                response = await self._session.post(
                    self._url,
                    data=json.dumps(body),
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
                )
                if response.status < 400:
                    break
                async with response:
                    refusal = await response.text()
                if not (response.status == 400 and self._reasoning_off and _REASONING_MANDATORY in refusal.lower()):
                    raise _status_error(response.status, refusal, response.headers)
                # Once: the retried body has no switch left to drop (nor has a livekit retry's).
                _note_reasoning_mandatory(self._provider, self._model)
                for key in self._reasoning_off:
                    body.pop(key, None)
                    self._body.pop(key, None)
                self._reasoning_off = []
            async with response:
                calls = _ToolCalls()
                thinking = llm_utils.ThinkingTokenFilter()
                reasoned = False

                def send_text(text: _TextRun) -> None:
                    if (chunk := text.take()) is not None:
                        self._event_ch.send_nowait(chunk)

                async for events in _sse_batches(response.content.iter_any()):
                    text = _TextRun()
                    try:
                        for data in events:
                            if data == _DONE:
                                return
                            chunk = json.loads(data)
                            if not isinstance(chunk, dict):
                                raise ValueError("a stream chunk is not a JSON object")
                            if chunk.get("error"):
                                raise ValueError(f"the provider reported an error mid-stream: {chunk['error']}")
                            chunk_id = str(chunk.get("id") or "")
                            for choice in chunk.get("choices") or ():
                                if not reasoned and _carries_reasoning(choice):
                                    reasoned = True
                                    _note_reasoning_streamed(
                                        self._provider, self._model, asked_off=bool(self._reasoning_off)
                                    )
                                chat_chunk = _parse_choice(chunk_id, choice, thinking, calls)
                                if chat_chunk is None:
                                    continue
                                if chat_chunk.has_response():
                                    retryable = False
                                if not text.add(chat_chunk):
                                    send_text(text)
                                    self._event_ch.send_nowait(chat_chunk)
                            if usage := chunk.get("usage"):
                                send_text(text)
                                self._event_ch.send_nowait(_usage_chunk(chunk_id, usage, chunk.get("service_tier")))
                    finally:
                        # Also on a malformed event: the text before it was received, as before.
                        send_text(text)
        except APIStatusError as e:
            e.retryable = e.retryable and retryable
            raise
        except TimeoutError:
            raise APITimeoutError(retryable=retryable) from None
        except Exception as e:
            raise APIConnectionError(retryable=retryable) from e


def _carries_reasoning(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(delta.get(key) for key in _REASONING_DELTAS)


# Per process: a model's reasoning switch is a property of the model and its host, not of a session.
_reasoning_mandatory: set[tuple[str, str]] = set()
_reasoning_reported: set[tuple[str, str]] = set()


def _note_reasoning_mandatory(provider: str, model: str) -> None:
    if (provider, model) not in _reasoning_mandatory:
        _reasoning_mandatory.add((provider, model))
        logger.warning(
            "%s refuses to turn reasoning off for %s; asking it without the switch from now on", provider, model
        )


def _note_reasoning_streamed(provider: str, model: str, *, asked_off: bool) -> None:
    if (provider, model) in _reasoning_reported:
        return
    _reasoning_reported.add((provider, model))
    if asked_off:
        logger.warning(
            "%s streamed reasoning for %s although the request turned it off; it is not spoken", provider, model
        )
    else:
        logger.info("%s streams reasoning for %s; it is not spoken", provider, model)


def _status_error(status: int, text: str, headers: Mapping[str, str]) -> APIStatusError:
    try:
        body: object = json.loads(text)
    except ValueError:
        body = text
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return APIStatusError(
        f"Error code: {status} - {message or text[:200]}",
        status_code=status,
        request_id=headers.get("x-request-id"),
        body=body,
    )


class _TextRun:
    """Consecutive plain text deltas of one completion that arrived together, as one chunk.

    Tokens that one network read brings are all handled in the same loop iteration anyway; one
    chunk instead of one per token gives the session the same text at the same moment, but
    each of its per-chunk stages (metrics, tees, the LLM and TTS nodes' channels, text
    transforms) runs once per read, not once per token."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._parts: list[str] = []

    def add(self, chunk: llm.ChatChunk) -> bool:
        """Take ``chunk`` if it is plain text that can join this run; False leaves it to the caller."""
        delta = chunk.delta
        if (
            delta is None
            or chunk.usage is not None
            or not delta.content
            or delta.tool_calls
            or delta.extra
            or delta.role != "assistant"
            or (self._id is not None and chunk.id != self._id)
        ):
            return False
        self._id = chunk.id
        self._parts.append(delta.content)
        return True

    def take(self) -> llm.ChatChunk | None:
        """The run so far as one chunk (None when empty), and start a new run."""
        if self._id is None:
            return None
        chunk = llm.ChatChunk(id=self._id, delta=llm.ChoiceDelta(role="assistant", content="".join(self._parts)))
        self._id = None
        self._parts = []
        return chunk


async def _sse_batches(blocks: AsyncIterable[bytes]) -> AsyncIterator[list[str]]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines), one list
    per block of bytes that completed at least one event; ``blocks`` may split the stream
    anywhere."""
    pending = b""
    lines: list[str] = []
    events: list[str] = []

    def take(raw: bytes) -> None:
        nonlocal lines
        line = raw.decode("utf-8").rstrip("\r")
        if not line:
            if lines:
                events.append("\n".join(lines))
                lines = []
        elif line.startswith("data:"):
            lines.append(line[6:] if line.startswith("data: ") else line[5:])

    async for block in blocks:
        *complete, pending = (pending + block).split(b"\n")
        for raw in complete:
            take(raw)
        if events:
            yield events
            events = []
    if pending:
        take(pending)
    if lines:
        events.append("\n".join(lines))
    if events:
        yield events


class _ToolCalls:
    """The function call being streamed (its arguments arrive in pieces)."""

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.name: str | None = None
        self.arguments = ""
        self.extra: dict[str, Any] | None = None
        self.index: int | None = None

    def take(self) -> llm.FunctionToolCall:
        call = llm.FunctionToolCall(
            arguments=self.arguments, name=self.name or "", call_id=self.call_id or "", extra=self.extra
        )
        self.call_id = self.name = None
        self.arguments = ""
        self.extra = None
        return call


def _parse_choice(
    chunk_id: str, choice: dict[str, Any], thinking: llm_utils.ThinkingTokenFilter, calls: _ToolCalls
) -> llm.ChatChunk | None:
    delta = choice.get("delta")
    if not isinstance(delta, dict):  # Azure sends no delta for content-filtered choices
        return None
    finish_reason = choice.get("finish_reason")
    content = llm_utils.strip_thinking_tokens(delta.get("content"), thinking, final=finish_reason is not None)
    completed: list[llm.FunctionToolCall] = []
    for tool in delta.get("tool_calls") or ():
        function = tool.get("function")
        if not function:
            continue
        if calls.call_id and tool.get("id") and tool.get("index") != calls.index:
            completed.append(calls.take())
        if function.get("name"):
            calls.index = tool.get("index")
            calls.call_id = tool.get("id")
            calls.name = function["name"]
            calls.arguments = function.get("arguments") or ""
            calls.extra = tool.get("extra_content")
        elif function.get("arguments"):
            calls.arguments += function["arguments"]
    if finish_reason in ("tool_calls", "stop") and calls.call_id:
        completed.append(calls.take())
    extra = delta.get("extra_content")
    if completed:
        return llm.ChatChunk(
            id=chunk_id,
            delta=llm.ChoiceDelta(role="assistant", content=content, extra=extra, tool_calls=completed),
        )
    if not content and not extra:
        return None
    return llm.ChatChunk(id=chunk_id, delta=llm.ChoiceDelta(role="assistant", content=content, extra=extra))


def _usage_chunk(chunk_id: str, usage: dict[str, Any], service_tier: str | None) -> llm.ChatChunk:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return llm.ChatChunk(
        id=chunk_id,
        usage=llm.CompletionUsage(
            completion_tokens=usage.get("completion_tokens") or 0,
            prompt_tokens=usage.get("prompt_tokens") or 0,
            prompt_cached_tokens=prompt_details.get("cached_tokens") or 0,
            cache_creation_tokens=prompt_details.get("cache_write_tokens") or 0,
            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
            total_tokens=usage.get("total_tokens") or 0,
            service_tier=service_tier,
        ),
    )


class _Lease:
    """One LLM's hold on its loop's shared HTTP session; the last to let go closes it.
    An aiohttp session belongs to the loop that opened it, hence one per loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        shared = _sessions.get(self._loop)
        if shared is None or shared[0].closed:
            shared = (aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=120)), 0)
        self.session = shared[0]
        _sessions[self._loop] = (self.session, shared[1] + 1)

    async def release(self) -> None:
        session, users = _sessions.get(self._loop, (None, 0))
        if session is not self.session:
            return
        if users > 1:
            _sessions[self._loop] = (session, users - 1)
            return
        del _sessions[self._loop]
        await session.close()


_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, int]] = (
    weakref.WeakKeyDictionary()
)
