"""Tool calls and the built-in end_call, in whole conversations on the fakes: the LLM (the chat
fake) calls a tool, the worker POSTs to the customer's endpoint (a loopback receiver that checks
the signature), and the result comes back to the LLM and is spoken."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from livekit.agents.voice.audio_recognition import _PreemptiveGenerationInfo

from agent_worker import contracts
from agent_worker.conversation import Conversation
from agent_worker.provider_settings import ProviderSettings
from agent_worker.tests import test_conversation_sarvam as on_the_fakes
from agent_worker.tests.conftest import Call, RecordingObserver
from agent_worker.tools import ToolOptions, tool_signing_secret
from outbound import ssrf
from testsupport.fakes.customer_tools import CustomerTools
from testsupport.fakes.openai_chat import FakeChatServer, ScriptedReply, ScriptedToolCall
from testsupport.fakes.sarvam import FakeSarvam

# The Sarvam and chat servers and the provider settings pointing at them.
sarvam_server = on_the_fakes.sarvam_server
chat_server = on_the_fakes.chat_server
settings = on_the_fakes.settings
config = on_the_fakes.config

SECRET = tool_signing_secret(signing_key="test-tool-signing-key", organization_id="org-1")
LOOPBACK = ssrf.parse_networks(["127.0.0.1/32"])


@pytest.fixture(scope="module")
def customer_server() -> Iterator[CustomerTools]:
    tools = CustomerTools(secret=SECRET).start()
    yield tools
    tools.stop()


@pytest.fixture
def customer(customer_server: CustomerTools) -> CustomerTools:
    customer_server.reset()
    return customer_server


def tool(customer: CustomerTools, name: str, **overrides: Any) -> contracts.ToolSpec:
    spec: dict[str, Any] = {
        "name": name,
        "description": f"The {name} tool.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        "url": customer.url(name),
    }
    return contracts.ToolSpec.model_validate({**spec, **overrides})


def conversation_with(
    settings: ProviderSettings,
    observer: RecordingObserver,
    *tools: contracts.ToolSpec,
    allowed: ssrf.Networks = LOOPBACK,
    filler_delay_seconds: float = 0.0,
) -> Conversation:
    return Conversation(
        session_id="tools-1",
        config=config(tools=list(tools)),
        providers=settings,
        observer=observer,
        aec_warmup_seconds=None,
        tool_options=ToolOptions(
            signing_secret=SECRET, allowed_networks=allowed, filler_delay_seconds=filler_delay_seconds
        ),
    )


def calls_reply(*calls: tuple[str, dict[str, Any]]) -> ScriptedReply:
    return ScriptedReply(
        "",
        tool_calls=tuple(
            ScriptedToolCall(name, json.dumps(arguments), call_id=f"call_{i}")
            for i, (name, arguments) in enumerate(calls)
        ),
    )


def tool_messages(server: FakeChatServer) -> dict[str, str]:
    """call id → content of the tool results the LLM was last sent."""
    return {m["tool_call_id"]: m["content"] for m in server.requests[-1].messages if m["role"] == "tool"}


def tool_lines(observer: RecordingObserver) -> list[contracts.ToolCallRecord]:
    return [t.tool_call for t in observer.transcripts if t.role == "tool" and t.tool_call is not None]


async def ask(call: Call, observer: RecordingObserver, *, replies: int) -> None:
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")
    await call.caller.say(0.6)
    await observer.wait_for(lambda: len(observer.final("agent")) >= replies)


async def test_a_tool_gets_the_signed_arguments_and_its_answer_is_spoken(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    customer.answer("lookup_order", body={"status": "shipped", "eta": "Friday"})
    chat.script_replies(
        "Hello!",
        calls_reply(("lookup_order", {"order_id": "A-17"})),
        "Order A-17 has shipped and arrives on Friday.",
    )
    sarvam.script_transcripts("where is my order A-17")
    observer = RecordingObserver()
    call = await calls(conversation_with(settings, observer, tool(customer, "lookup_order")), observer)
    await ask(call, observer, replies=2)

    (request,) = customer.requests
    assert customer.refused == []
    assert request.body == {
        "session_id": "tools-1",
        "call_id": "call_0",
        "tool": "lookup_order",
        "arguments": {"order_id": "A-17"},
    }
    assert request.headers["webhook-id"].startswith("tool_")
    # The LLM read the customer's answer as the call's result, and its reply to it was spoken.
    assert tool_messages(chat) == {"call_0": '{"status": "shipped", "eta": "Friday"}'}
    assert observer.final("agent")[-1].text == "Order A-17 has shipped and arrives on Friday."
    assert any("arrives on Friday" in text for _, text in sarvam.tts_texts)
    # On the record: the call, its arguments, its result and how long it took.
    (line,) = tool_lines(observer)
    assert line.name == "lookup_order" and line.call_id == "call_0"
    assert json.loads(line.arguments) == {"order_id": "A-17"}
    assert line.result == '{"status": "shipped", "eta": "Friday"}' and not line.is_error
    assert line.latency_ms > 0
    # The first request offered the customer's tool with its schema, and end_call.
    offered = {t["function"]["name"]: t["function"] for t in chat.requests[1].body["tools"]}
    assert set(offered) == {"lookup_order", "end_call"}
    assert offered["lookup_order"]["parameters"] == {"type": "object", "properties": {"order_id": {"type": "string"}}}
    # The tokens of the extra LLM round (reading the result) are billed like any other.
    await observer.wait_for(lambda: observer.agent_states[-1] == "listening")
    await call.conversation.end(contracts.EndReason.COMPLETED)
    usage = contracts.UsageComponent
    assert len(chat.usage_served) == 3
    assert observer.usage_total(usage.LLM_INPUT_TOKENS) == {
        ("kimi-k2.5", "clarifai"): sum(p for p, _ in chat.usage_served)
    }
    assert observer.usage_total(usage.LLM_OUTPUT_TOKENS) == {
        ("kimi-k2.5", "clarifai"): sum(c for _, c in chat.usage_served)
    }


async def test_parallel_tool_calls_all_run_and_all_results_reach_the_llm(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    customer.answer("lookup_order", body={"status": "shipped"}, delay_s=0.4)
    customer.answer("store_hours", body={"open": "9-5"}, delay_s=0.4)
    chat.script_replies(
        "Hello!",
        calls_reply(("lookup_order", {"order_id": "B-2"}), ("store_hours", {})),
        "It has shipped, and we are open nine to five.",
    )
    sarvam.script_transcripts("order B-2 and your hours")
    observer = RecordingObserver()
    tools = (tool(customer, "lookup_order"), tool(customer, "store_hours", parameters={"type": "object"}))
    call = await calls(conversation_with(settings, observer, *tools), observer)
    await ask(call, observer, replies=2)

    assert sorted(r.tool for r in customer.requests) == ["lookup_order", "store_hours"]
    # Both ran at once: the second arrived before the first could have answered.
    first, second = sorted(customer.requests, key=lambda r: r.received_at)
    assert second.received_at - first.received_at < 0.4
    assert tool_messages(chat) == {"call_0": '{"status": "shipped"}', "call_1": '{"open": "9-5"}'}
    assert observer.final("agent")[-1].text == "It has shipped, and we are open nine to five."


async def test_a_slow_tool_gets_a_filler_then_times_out_with_an_error_the_llm_explains(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    customer.answer("lookup_order", body={"status": "late"}, delay_s=3.0)
    chat.script_replies(
        "Hello!", calls_reply(("lookup_order", {"order_id": "C-3"})), "Sorry, the order system is not answering."
    )
    sarvam.script_transcripts("where is order C-3")
    observer = RecordingObserver()
    conversation = conversation_with(
        settings, observer, tool(customer, "lookup_order", timeout_ms=800), filler_delay_seconds=0.3
    )
    call = await calls(conversation, observer)
    await ask(call, observer, replies=2)

    assert len(customer.requests) == 1
    assert "did not answer within 800 ms" in tool_messages(chat)["call_0"]
    (line,) = tool_lines(observer)
    assert line.is_error and "800 ms" in line.result
    assert "One moment, please." in [text.strip() for _, text in sarvam.tts_texts]
    assert observer.final("agent")[-1].text == "Sorry, the order system is not answering."


async def test_a_failing_tool_returns_an_error_result_and_the_conversation_goes_on(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    customer.answer("lookup_order", status=500, body={"error": "database down"})
    chat.script_replies("Hello!", calls_reply(("lookup_order", {"order_id": "D-4"})), "I cannot check that right now.")
    sarvam.script_transcripts("where is order D-4")
    observer = RecordingObserver()
    call = await calls(conversation_with(settings, observer, tool(customer, "lookup_order")), observer)
    await ask(call, observer, replies=2)

    result = tool_messages(chat)["call_0"]
    assert "HTTP 500" in result and "database down" in result
    assert tool_lines(observer)[0].is_error
    # No user-filler when the tool answered fast (the filler delay is long here: 0 means off).
    assert observer.final("agent")[-1].text == "I cannot check that right now."
    assert observer.ended == []


async def test_the_ssrf_guard_refuses_a_private_tool_url(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    chat.script_replies("Hello!", calls_reply(("lookup_order", {"order_id": "E-5"})), "I cannot reach that system.")
    sarvam.script_transcripts("where is order E-5")
    observer = RecordingObserver()
    conversation = conversation_with(settings, observer, tool(customer, "lookup_order"), allowed=())
    call = await calls(conversation, observer)
    await ask(call, observer, replies=2)

    assert customer.requests == []
    assert "cannot be reached from here" in tool_messages(chat)["call_0"]
    assert tool_lines(observer)[0].is_error


async def test_end_call_says_goodbye_then_ends_the_session_as_agent_hangup(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    chat.script_replies("Hello!", calls_reply(("end_call", {})), "Thank you for calling, goodbye!")
    sarvam.script_transcripts("that is all thanks bye")
    observer = RecordingObserver()
    conversation = conversation_with(settings, observer)
    call = await calls(conversation, observer)
    await ask(call, observer, replies=2)
    ended = await asyncio.wait_for(conversation.wait_ended(), timeout=20)

    assert ended.reason == contracts.EndReason.AGENT_HANGUP
    assert observer.final("agent")[-1].text == "Thank you for calling, goodbye!"
    # The goodbye was heard in full before the end: played audio covers its text.
    goodbye_at = next(at for at, text in sarvam.tts_texts if "goodbye" in text)
    assert call.caller.played_seconds(since=goodbye_at) >= 0.5 * len("Thank you for calling, goodbye!") * (
        sarvam.tts_ms_per_char / 1000
    )
    assert [line.name for line in tool_lines(observer)] == ["end_call"]
    # Transcript lines are all delivered before the end.
    assert observer.ended == [ended]


async def test_a_discarded_preemptive_reply_runs_no_tool(
    settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, calls: Any, customer: CustomerTools
) -> None:
    customer.answer("lookup_order", body={"status": "shipped"})
    # The preemptive reply (on a transcript the caller then went past) asks for the tool; the
    # reply to what the caller really said does not.
    chat.script_replies("Hello!", calls_reply(("lookup_order", {"order_id": "F-6"})), "Okay, I will not look it up.")
    sarvam.script_transcripts("never mind do not check")
    observer = RecordingObserver()
    conversation = conversation_with(settings, observer, tool(customer, "lookup_order"))
    call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")

    activity = conversation.session._activity
    assert activity is not None
    async with asyncio.timeout(10):
        while activity._current_speech is not None:  # the greeting's handle is let go of
            await asyncio.sleep(0.02)
    activity.on_preemptive_generation(
        _PreemptiveGenerationInfo(new_transcript="check order F-6", transcript_confidence=1.0, started_speaking_at=None)
    )
    # The preemptive request was answered with the tool call before the caller's turn ended.
    async with asyncio.timeout(10):
        while len(chat.usage_served) < 2:
            await asyncio.sleep(0.02)
    await call.caller.say(0.6)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2)

    assert chat.requests[1].messages[-1]["content"] == "check order F-6"
    assert chat.requests[2].messages[-1]["content"] == "never mind do not check"
    assert customer.requests == []
    assert tool_lines(observer) == []
    assert observer.final("agent")[-1].text == "Okay, I will not look it up."
