"""The OpenAI-style chat fake, driven by the official ``openai`` SDK (stream and non-stream,
usage in the last chunk, streamed tool calls), so the fake cannot drift from the wire format
clients nobody here wrote expect.

Sources, side by side: the SDK's types are the source for the OpenAI chunk shape (tool-call
deltas, the usage-only last chunk); OpenRouter's reasoning-tokens page is the source for its
``reasoning`` / ``reasoning_details`` deltas and the mandatory-reasoning 400, which the SDK does
not type (they arrive as extra fields, read through ``model_extra``); Sarvam's Chat Completion V1
reference is the source for the models its endpoint serves and ``reasoning_effort: null``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest

from testsupport.fakes.openai_chat import (
    MANDATORY_REASONING_MESSAGE,
    FakeChatServer,
    ScriptedReply,
    ScriptedToolCall,
    split_arguments,
)
from testsupport.fakes.sarvam import FakeSarvam

KEY = "sk-or-contract"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful voice assistant."},
    {"role": "user", "content": "When do you open tomorrow"},
]
WEATHER_TOOL: openai.types.chat.ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "opening_hours",
        "description": "When a branch opens on a day.",
        "parameters": {
            "type": "object",
            "properties": {"day": {"type": "string"}, "branch": {"type": "string"}},
            "required": ["day", "branch"],
        },
    },
}


@pytest.fixture
async def chat() -> AsyncIterator[FakeChatServer]:
    async with FakeChatServer(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def client(chat: FakeChatServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=chat.base_url("/api/v1"), api_key=KEY, max_retries=0) as sdk:
        yield sdk


async def test_non_streamed_completion_with_usage(chat: FakeChatServer, client: openai.AsyncOpenAI) -> None:
    chat.script_replies("We open at nine.")
    completion = await client.chat.completions.create(model="vendor/model", messages=MESSAGES)

    assert completion.object == "chat.completion"
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "We open at nine.",
        "stop",
    )
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 4)
    assert completion.usage.total_tokens == 15


async def test_streamed_completion_puts_usage_in_a_last_chunk_without_choices(
    chat: FakeChatServer, client: openai.AsyncOpenAI
) -> None:
    chat.script_replies("We open at nine tomorrow.")
    stream = await client.chat.completions.create(
        model="vendor/model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 5)
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in body) == "We open at nine tomorrow."
    assert body[-1].choices[0].finish_reason == "stop"


async def test_without_include_usage_no_usage_chunk_is_sent(chat: FakeChatServer, client: openai.AsyncOpenAI) -> None:
    chat.script_replies("Nine.")
    stream = await client.chat.completions.create(model="vendor/model", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]

    assert all(c.usage is None and c.choices for c in chunks)


async def test_tool_calls_stream_as_index_id_name_then_argument_fragments(
    chat: FakeChatServer, client: openai.AsyncOpenAI
) -> None:
    arguments = json.dumps({"day": "tuesday", "branch": "Pune"})
    chat.script_replies(
        ScriptedReply(
            "",
            tool_calls=(
                ScriptedToolCall("opening_hours", arguments, call_id="call_a"),
                ScriptedToolCall("opening_hours", '{"day": "wednesday", "branch": "Pune"}'),
            ),
        )
    )
    stream = await client.chat.completions.create(
        model="vendor/model",
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    openings = 0
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    openings += 1
                    assert delta.type == "function" and delta.function is not None and delta.function.name
                    call["id"], call["name"] = delta.id, delta.function.name
                elif delta.function is not None:
                    assert delta.function.name is None  # fragments carry arguments only
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""

    assert finish == "tool_calls"
    assert openings == 2
    assert calls[0] == {"id": "call_a", "name": "opening_hours", "arguments": arguments}
    assert calls[1]["id"] and json.loads(calls[1]["arguments"]) == {"day": "wednesday", "branch": "Pune"}
    assert len(split_arguments(arguments)) > 1  # the arguments really came in several fragments
    assert chat.requests[0].body["tools"] == [WEATHER_TOOL]


async def test_tool_calls_in_a_non_streamed_completion(chat: FakeChatServer, client: openai.AsyncOpenAI) -> None:
    chat.script_replies(ScriptedReply("", tool_calls=(ScriptedToolCall("opening_hours", '{"day": "monday"}'),)))
    completion = await client.chat.completions.create(model="vendor/model", messages=MESSAGES, tools=[WEATHER_TOOL])

    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("opening_hours", '{"day": "monday"}')


async def test_openrouter_reasoning_fields_arrive_beside_the_content() -> None:
    async with FakeChatServer(api_key=KEY, reasoning_field="reasoning") as router:
        router.script_replies(*[ScriptedReply("Nine.", reasoning="check the hours")] * 2)
        async with openai.AsyncOpenAI(base_url=router.base_url("/api/v1"), api_key=KEY, max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(model="vendor/model", messages=MESSAGES, stream=True)
            deltas = [c.choices[0].delta for c in [chunk async for chunk in stream] if c.choices]
            completion = await sdk.chat.completions.create(model="vendor/model", messages=MESSAGES)

    extras = [d.model_extra or {} for d in deltas]
    assert "".join(e.get("reasoning", "") for e in extras) == "check the hours"
    details = [detail for e in extras for detail in e.get("reasoning_details", ())]
    assert {d["type"] for d in details} == {"reasoning.text"}
    assert "".join(d["text"] for d in details) == "check the hours"
    assert "".join(d.content or "" for d in deltas) == "Nine."
    message_extra = completion.choices[0].message.model_extra or {}
    assert message_extra["reasoning"] == "check the hours"


async def test_disabling_mandatory_reasoning_is_a_bad_request() -> None:
    mandatory = frozenset({"deepseek/deepseek-r1"})
    async with FakeChatServer(api_key=KEY, reasoning_mandatory_models=mandatory) as router:
        sdk = openai.AsyncOpenAI(base_url=router.base_url("/api/v1"), api_key=KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(
                model="deepseek/deepseek-r1", messages=MESSAGES, extra_body={"reasoning": {"enabled": False}}
            )
        allowed = await sdk.chat.completions.create(
            model="deepseek/deepseek-r1", messages=MESSAGES, extra_body={"reasoning": {"effort": "low"}}
        )
        await sdk.close()

    assert refused.value.status_code == 400
    assert refused.value.message.endswith(MANDATORY_REASONING_MESSAGE)
    assert allowed.choices[0].message.content


async def test_a_wrong_key_is_an_authentication_error(chat: FakeChatServer) -> None:
    async with openai.AsyncOpenAI(base_url=chat.base_url("/api/v1"), api_key="wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="vendor/model", messages=MESSAGES)


async def test_sarvam_chat_serves_only_its_v1_models_and_takes_a_null_reasoning_effort() -> None:
    async with FakeSarvam(api_key="sk-sarvam") as sarvam:
        sdk = openai.AsyncOpenAI(
            base_url=sarvam.chat_base_url, api_key="sk-sarvam", default_headers={"api-subscription-key": "sk-sarvam"}
        )
        answered = await sdk.chat.completions.create(
            model="sarvam-105b-conversations", messages=MESSAGES, reasoning_effort=None
        )
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model="sarvam-m", messages=MESSAGES)
        await sdk.close()

    assert answered.choices[0].message.content
    sent = sarvam.chat.requests[0].body
    assert "reasoning_effort" in sent and sent["reasoning_effort"] is None
