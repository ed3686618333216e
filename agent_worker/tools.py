"""The session's tools as livekit function tools: the customer's, called over HTTP, and the
built-in ``end_call``.

A customer tool call is a POST of ``{"session_id", "call_id", "tool", "arguments"}`` to the
tool's URL, signed like the customer's webhooks (Standard Webhooks headers, ``outbound.signing``)
with the organization's tool signing secret, through the one SSRF guard (``outbound.client``).
The response body (2xx, at most ``MAX_RESULT_BYTES``) is the result the LLM reads; a refusal, a
failure, a non-2xx answer or a timeout is an error result the LLM can explain to the caller. A
call still running after ``filler_delay_seconds`` gets a short spoken filler.

livekit runs a reply's tools only once that reply is scheduled to be spoken, so a preemptive
reply that is discarded (the caller said more) never calls anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm
from livekit.agents.voice import RunContext

from agent_worker import contracts
from outbound import client, signing, ssrf

logger = logging.getLogger(__name__)

MAX_RESULT_BYTES = 16 * 1024  # what the LLM is given of a tool's answer
_SECRET_CONTEXT = b"callmissed tool signing secret v1:"

END_CALL_DESCRIPTION = (
    "End the call. Call this only when the conversation is over: the caller said goodbye, or "
    "asked to hang up, or has nothing more to ask. After calling it, say a short goodbye."
)
END_CALL_RESULT = "The call ends after this reply. Say a short, friendly goodbye in one sentence, nothing else."

# Spoken while a slow tool runs, in the session's language (the part before the region).
_FILLERS = {
    "en": "One moment, please.",
    "hi": "एक पल रुकिए।",
    "bn": "এক মুহূর্ত অপেক্ষা করুন।",
    "ta": "ஒரு நிமிடம் காத்திருங்கள்.",
    "te": "ఒక్క క్షణం ఆగండి.",
    "mr": "एक क्षण थांबा.",
    "kn": "ಒಂದು ಕ್ಷಣ ಕಾಯಿರಿ.",
    "ml": "ഒരു നിമിഷം കാത്തിരിക്കൂ.",
    "gu": "એક ક્ષણ રાહ જુઓ.",
    "pa": "ਇੱਕ ਪਲ ਰੁਕੋ।",
    "od": "ଗୋଟିଏ ମୁହୂର୍ତ୍ତ ଅପେକ୍ଷା କରନ୍ତୁ।",
}

# Tool calls block on sockets; their own threads keep them off the default executor, which the
# audio path's helpers use.
_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tool-call")


@dataclass(frozen=True)
class ToolOptions:
    """How this conversation calls its tools."""

    signing_secret: str
    allowed_networks: ssrf.Networks = ()
    filler_delay_seconds: float = 1.5  # 0 or less: no filler


def tool_signing_secret(*, signing_key: str, organization_id: str) -> str:
    """The organization's ``whsec_`` tool signing secret, derived from the platform's key.

    Derived rather than stored, so that the worker can sign without Django and without the secret
    ever travelling in the dispatch metadata (which the caller's browser can read)."""
    digest = hmac.new(signing_key.encode(), _SECRET_CONTEXT + organization_id.encode(), hashlib.sha256).digest()
    return signing.SECRET_PREFIX + base64.b64encode(digest).decode()


def tool_options(
    *, signing_key: str, organization_id: str, allowed_networks: Iterable[str], filler_delay_seconds: float
) -> ToolOptions:
    """The options of one organization's conversations, from the settings both processes read."""
    return ToolOptions(
        signing_secret=tool_signing_secret(signing_key=signing_key, organization_id=organization_id),
        allowed_networks=ssrf.parse_networks(allowed_networks),
        filler_delay_seconds=filler_delay_seconds,
    )


def filler_for(language: str) -> str:
    return _FILLERS.get(language.split("-", 1)[0].lower(), _FILLERS["en"])


@dataclass(frozen=True)
class ToolCallDone:
    """One finished call, for the transcript; times are ``time.time()``."""

    record: contracts.ToolCallRecord
    started_at: float
    ended_at: float


def _excerpt(text: str) -> str:
    limit = contracts.MAX_TOOL_EXCERPT_CHARS
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SessionTools:
    """The function tools of one conversation."""

    def __init__(
        self,
        *,
        session_id: str,
        config: contracts.SessionConfig,
        options: ToolOptions,
        on_call_done: Callable[[ToolCallDone], None],
        on_end_call: Callable[[], None],
    ) -> None:
        self._session_id = session_id
        self._language = config.language
        self._specs = list(config.tools)
        self._options = options
        self._on_call_done = on_call_done
        self._on_end_call = on_end_call
        self.end_requested = False

    def function_tools(self) -> list[llm.Tool | llm.Toolset]:
        tools: list[llm.Tool | llm.Toolset] = [self._customer_tool(spec) for spec in self._specs]
        tools.append(self._end_call_tool())
        return tools

    # ------------------------------------------------------------------ customer tools

    def _customer_tool(self, spec: contracts.ToolSpec) -> llm.Tool:
        async def call(raw_arguments: dict[str, Any], context: RunContext) -> str:
            return await self.run(spec, raw_arguments, context)

        schema = {"name": spec.name, "description": spec.description, "parameters": spec.parameters}
        return llm.function_tool(call, raw_schema=schema)

    async def run(self, spec: contracts.ToolSpec, arguments: dict[str, Any], context: RunContext) -> str:
        call_id = context.function_call.call_id
        started_at, started = time.time(), time.monotonic()
        filler = self._schedule_filler(context)
        result, is_error = "The call was cancelled.", True
        try:
            result, is_error = await self._call(spec, call_id=call_id, arguments=arguments), False
        except llm.ToolError as error:
            result = error.message
            raise
        finally:
            filler.cancel()
            self._on_call_done(
                ToolCallDone(
                    record=contracts.ToolCallRecord(
                        name=spec.name,
                        call_id=call_id,
                        arguments=_excerpt(context.function_call.arguments),
                        result=_excerpt(result),
                        is_error=is_error,
                        latency_ms=round((time.monotonic() - started) * 1000, 1),
                    ),
                    started_at=started_at,
                    ended_at=time.time(),
                )
            )
        return result

    async def _call(self, spec: contracts.ToolSpec, *, call_id: str, arguments: dict[str, Any]) -> str:
        body = json.dumps(
            {"session_id": self._session_id, "call_id": call_id, "tool": spec.name, "arguments": arguments},
            ensure_ascii=False,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "CallMissed-Tools/1",
            **signing.sign_headers(
                secrets=[self._options.signing_secret],
                msg_id=f"tool_{uuid.uuid4().hex}",
                timestamp=int(time.time()),
                body=body,
            ),
        }
        timeout = spec.timeout_ms / 1000
        loop = asyncio.get_running_loop()
        request = loop.run_in_executor(
            _executor,
            lambda: client.post(
                spec.url,
                body=body,
                headers=headers,
                timeout=timeout,
                allowed_networks=self._options.allowed_networks,
                max_response_bytes=MAX_RESULT_BYTES,
            ),
        )
        try:
            response = await asyncio.wait_for(request, timeout)
        except TimeoutError:
            raise llm.ToolError(f"The tool {spec.name} did not answer within {spec.timeout_ms} ms.") from None
        except ssrf.DestinationRefused as error:
            logger.warning("Session %s: tool %s refused: %s", self._session_id, spec.name, error)
            raise llm.ToolError(f"The tool {spec.name} cannot be reached from here.") from None
        except client.RequestFailed as error:
            if "timed out" in str(error):
                raise llm.ToolError(f"The tool {spec.name} did not answer within {spec.timeout_ms} ms.") from None
            logger.info("Session %s: tool %s failed: %s", self._session_id, spec.name, error)
            raise llm.ToolError(f"The tool {spec.name} could not be reached.") from None
        text = response.body.decode("utf-8", errors="replace")
        if not 200 <= response.status < 300:
            raise llm.ToolError(f"The tool {spec.name} failed (HTTP {response.status}): {text[:300]}")
        return text

    def _schedule_filler(self, context: RunContext) -> asyncio.TimerHandle | asyncio.Handle:
        delay = self._options.filler_delay_seconds
        loop = asyncio.get_running_loop()
        if delay <= 0:
            return loop.call_soon(lambda: None)

        def speak() -> None:
            with contextlib.suppress(RuntimeError):  # the session is closing
                context.session.say(filler_for(self._language), add_to_chat_ctx=False)

        return loop.call_later(delay, speak)

    # ------------------------------------------------------------------ end_call

    def _end_call_tool(self) -> llm.Tool:
        async def end_call(raw_arguments: dict[str, Any], context: RunContext) -> str:
            # The goodbye is the reply to this result, spoken on the same speech handle: the call
            # ends once that handle is done, and the caller cannot cut the goodbye short.
            self.end_requested = True
            context.disallow_interruptions()
            context.speech_handle.add_done_callback(lambda _: self._on_end_call())
            self._on_call_done(
                ToolCallDone(
                    record=contracts.ToolCallRecord(
                        name=contracts.END_CALL_TOOL,
                        call_id=context.function_call.call_id,
                        arguments=_excerpt(context.function_call.arguments),
                        result=_excerpt(END_CALL_RESULT),
                    ),
                    started_at=time.time(),
                    ended_at=time.time(),
                )
            )
            return END_CALL_RESULT

        schema = {
            "name": contracts.END_CALL_TOOL,
            "description": END_CALL_DESCRIPTION,
            "parameters": {"type": "object", "properties": {}},
        }
        # Not while greeting: a call cannot be over before it began.
        return llm.function_tool(end_call, raw_schema=schema, flags=llm.ToolFlag.IGNORE_ON_ENTER)
