"""Each LLM route, built by ``build_llm``, against loopback OpenAI-compatible fakes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import openai
import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError, llm
from livekit.agents.metrics import LLMMetrics

from agent_worker.provider_settings import ProviderConfigError, ProviderSettings
from agent_worker.providers import openai_compat
from agent_worker.providers.llm import LLMModelUnavailableError, UnknownLLMModelError, build_llm
from testsupport.fakes.openai_chat import FakeChatServer, ScriptedReply, ScriptedToolCall
from testsupport.fakes.sarvam import FakeSarvam

CLARIFAI_PAT = "clarifai-pat"
OPENROUTER_KEY = "or-key"
SARVAM_KEY = "sk-sarvam-chat"
KIMI_ON_CLARIFAI = "https://clarifai.com/moonshotai/chat-completion/models/Kimi-K2_5"
FAST_RETRY = APIConnectOptions(max_retry=2, retry_interval=0.01, timeout=5.0)


@dataclass
class Reply:
    text: str
    usage: llm.CompletionUsage | None
    metrics: list[LLMMetrics]


@pytest.fixture(scope="module")
def chat_server() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key=CLARIFAI_PAT, api_keys=(OPENROUTER_KEY,)) as fake:
        yield fake


@pytest.fixture(scope="module")
def sarvam_server() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=SARVAM_KEY) as fake:
        yield fake


@pytest.fixture
def settings(chat: FakeChatServer, sarvam: FakeSarvam) -> ProviderSettings:
    return ProviderSettings(
        sarvam_api_key=SARVAM_KEY,
        sarvam_base_url=sarvam.http_url,
        sarvam_ws_url=sarvam.ws_url,
        clarifai_pat=CLARIFAI_PAT,
        clarifai_base_url=chat.base_url("/v2/ext/openai/v1"),
        openrouter_api_key=OPENROUTER_KEY,
        openrouter_base_url=chat.base_url("/api/v1"),
    )


async def ask(model: llm.LLM, question: str = "what is the weather in Pune", **options: object) -> Reply:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are a helpful voice assistant.")
    ctx.add_message(role="user", content=question)
    metrics: list[LLMMetrics] = []
    model.on("metrics_collected", metrics.append)
    text, usage = "", None
    try:
        async with model.chat(chat_ctx=ctx, conn_options=options.get("conn_options", FAST_RETRY)) as stream:  # type: ignore[arg-type]
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    text += chunk.delta.content
                if chunk.usage:
                    usage = chunk.usage
    finally:
        # A failed turn must still give back the loop's shared connections, as a session does.
        await model.aclose()
    return Reply(text=text, usage=usage, metrics=metrics)


async def test_kimi_goes_to_clarifai_with_the_pat_and_thinking_disabled_the_way_clarifai_forwards_it(
    chat: FakeChatServer, settings: ProviderSettings
) -> None:
    chat.script_replies("It is sunny in Pune.")
    reply = await ask(build_llm("kimi-k2.5", settings))

    assert reply.text == "It is sunny in Pune."
    [request] = chat.requests
    assert request.path == "/v2/ext/openai/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {CLARIFAI_PAT}"
    assert request.model == KIMI_ON_CLARIFAI
    # Clarifai hands extra_body to the model server's chat template; a top-level Moonshot-style
    # "thinking" field would not reach it.
    assert request.body["extra_body"] == {"chat_template_kwargs": {"thinking": False}}
    assert "thinking" not in request.body and "chat_template_kwargs" not in request.body
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.messages[-1] == {"role": "user", "content": "what is the weather in Pune"}


async def test_reasoning_text_never_reaches_the_spoken_reply(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.script_replies(
        ScriptedReply("Namaste, how can I help?", reasoning="The user greets me so I should greet back.")
    )
    reply = await ask(build_llm("kimi-k2.5", settings))

    assert reply.text == "Namaste, how can I help?"
    assert "greet back" not in reply.text


async def test_think_tags_inside_the_content_are_not_spoken(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.script_replies("<think>planning my answer</think>Sure, I can do that.")
    reply = await ask(build_llm("kimi-k2.5", settings))

    assert "planning" not in reply.text
    assert reply.text.strip() == "Sure, I can do that."


async def test_token_usage_from_the_final_chunk_is_captured(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.script_replies(ScriptedReply("Four words right here.", reasoning="two more"))
    reply = await ask(build_llm("kimi-k2.5", settings), "one two three")

    [(prompt_tokens, completion_tokens)] = chat.usage_served
    assert (prompt_tokens, completion_tokens) == (6 + 3, 4 + 2)
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    [metrics] = reply.metrics
    assert (metrics.prompt_tokens, metrics.completion_tokens) == (prompt_tokens, completion_tokens)


async def test_sarvam_105b_goes_to_sarvam_as_the_conversations_variant_with_reasoning_off(
    sarvam: FakeSarvam, settings: ProviderSettings
) -> None:
    sarvam.chat.script_replies("Mausam achha hai.")
    reply = await ask(build_llm("sarvam-105b", settings))

    assert reply.text == "Mausam achha hai."
    [request] = sarvam.chat.requests
    assert request.path == "/v1/chat/completions"
    assert request.model == "sarvam-105b-conversations"
    assert "reasoning_effort" in request.body and request.body["reasoning_effort"] is None
    assert request.headers["api-subscription-key"] == SARVAM_KEY
    assert request.headers["Authorization"] == f"Bearer {SARVAM_KEY}"
    assert reply.usage is not None
    assert [(reply.usage.prompt_tokens, reply.usage.completion_tokens)] == sarvam.chat.usage_served


async def test_vendor_model_ids_go_to_openrouter_with_reasoning_off_and_its_reasoning_unspoken(
    settings: ProviderSettings,
) -> None:
    async with FakeChatServer(api_key=OPENROUTER_KEY, reasoning_field="reasoning") as router:
        router.script_replies(ScriptedReply("Hello from the router.", reasoning="hidden musings"))
        routed = ProviderSettings(openrouter_api_key=OPENROUTER_KEY, openrouter_base_url=router.base_url("/api/v1"))
        reply = await ask(build_llm("moonshotai/kimi-k2.5", routed))

    assert reply.text == "Hello from the router."
    [request] = router.requests
    assert request.path == "/api/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {OPENROUTER_KEY}"
    assert request.model == "moonshotai/kimi-k2.5"
    assert request.body["reasoning"] == {"enabled": False}
    assert "thinking" not in request.body


async def test_a_model_known_to_reason_always_is_not_asked_to_stop(settings: ProviderSettings) -> None:
    async with FakeChatServer(
        api_key=OPENROUTER_KEY,
        reasoning_field="reasoning",
        reasoning_mandatory_models=frozenset({"deepseek/deepseek-r1"}),
    ) as router:
        router.script_replies(ScriptedReply("Pune is sunny.", reasoning="weather lookup"))
        routed = ProviderSettings(openrouter_api_key=OPENROUTER_KEY, openrouter_base_url=router.base_url("/api/v1"))
        reply = await ask(build_llm("deepseek/deepseek-r1", routed))

    assert reply.text == "Pune is sunny."
    [request] = router.requests
    assert "reasoning" not in request.body


async def test_a_mandatory_reasoning_refusal_is_retried_once_without_the_switch_and_remembered(
    settings: ProviderSettings, caplog: pytest.LogCaptureFixture
) -> None:
    model = "newvendor/always-thinks"
    async with FakeChatServer(
        api_key=OPENROUTER_KEY, reasoning_field="reasoning", reasoning_mandatory_models=frozenset({model})
    ) as router:
        router.script_replies("First answer.", "Second answer.")
        routed = ProviderSettings(openrouter_api_key=OPENROUTER_KEY, openrouter_base_url=router.base_url("/api/v1"))
        with caplog.at_level("WARNING", logger="agent_worker.providers.openai_compat"):
            first = await ask(build_llm(model, routed))
            second = await ask(build_llm(model, routed))

    assert (first.text, second.text) == ("First answer.", "Second answer.")
    refused, retried, remembered = router.requests
    assert refused.body["reasoning"] == {"enabled": False}
    assert "reasoning" not in retried.body and "reasoning" not in remembered.body
    assert [r.getMessage() for r in caplog.records if "refuses to turn reasoning off" in r.getMessage()] == [
        f"{router.url.removeprefix('http://')} refuses to turn reasoning off for {model}; "
        "asking it without the switch from now on"
    ]


async def test_a_retry_after_the_mandatory_reasoning_fallback_does_not_bring_the_switch_back(
    settings: ProviderSettings,
) -> None:
    model = "newvendor/thinks-and-stumbles"
    async with FakeChatServer(api_key=OPENROUTER_KEY, reasoning_mandatory_models=frozenset({model})) as router:
        router.fail_next(500)  # answers the fallback request; livekit then retries the turn
        router.script_replies("Got there.")
        routed = ProviderSettings(openrouter_api_key=OPENROUTER_KEY, openrouter_base_url=router.base_url("/api/v1"))
        reply = await ask(build_llm(model, routed))

    assert reply.text == "Got there."
    assert ["reasoning" in r.body for r in router.requests] == [True, False, False]


async def test_a_refusal_for_another_reason_is_not_retried_without_the_switch(settings: ProviderSettings) -> None:
    async with FakeChatServer(api_key=OPENROUTER_KEY) as router:
        router.fail_next(400)
        routed = ProviderSettings(openrouter_api_key=OPENROUTER_KEY, openrouter_base_url=router.base_url("/api/v1"))
        with pytest.raises(APIError):
            await ask(build_llm("meta-llama/llama-3.3-70b-instruct", routed))

    assert [r.body["reasoning"] for r in router.requests] == [{"enabled": False}]


async def test_reasoning_that_arrives_although_turned_off_is_not_spoken_and_logged_once(
    chat: FakeChatServer, settings: ProviderSettings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Logged once per process: start from a process that has not heard from this host yet.
    monkeypatch.setattr(openai_compat, "_reasoning_reported", set())
    chat.script_replies(
        ScriptedReply("Haan, kal khule hain.", reasoning="the host ignored the switch"),
        ScriptedReply("Nau baje se.", reasoning="again"),
    )
    with caplog.at_level("INFO", logger="agent_worker.providers.openai_compat"):
        first = await ask(build_llm("kimi-k2.5", settings))
        second = await ask(build_llm("kimi-k2.5", settings))

    assert (first.text, second.text) == ("Haan, kal khule hain.", "Nau baje se.")
    warnings = [r for r in caplog.records if "although the request turned it off" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert KIMI_ON_CLARIFAI in warnings[0].getMessage()


async def test_a_streamed_tool_call_reaches_the_session_whole(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.script_replies(
        ScriptedReply(
            "Let me check.", tool_calls=(ScriptedToolCall("opening_hours", '{"day": "tuesday", "branch": "Pune"}'),)
        )
    )
    model = build_llm("kimi-k2.5", settings)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="are you open on tuesday")
    calls: list[llm.FunctionToolCall] = []
    try:
        async with model.chat(chat_ctx=ctx, tools=[opening_hours], conn_options=FAST_RETRY) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.tool_calls:
                    calls.extend(chunk.delta.tool_calls)
    finally:
        await model.aclose()

    [call] = calls
    assert (call.name, call.arguments) == ("opening_hours", '{"day": "tuesday", "branch": "Pune"}')
    assert call.call_id
    [tool] = chat.requests[0].body["tools"]
    assert tool["function"]["name"] == "opening_hours"


async def test_the_client_speaks_the_pinned_openai_sdks_wire_format(chat: FakeChatServer) -> None:
    """Same chat, same tool, same scripted stream: our request body is the one the official SDK
    puts on the wire, and we read back the text, tool call and usage the SDK reads."""
    reply = ScriptedReply("Let me check.", tool_calls=(ScriptedToolCall("opening_hours", '{"day": "tuesday"}'),))
    chat.script_replies(reply, reply)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are a helpful voice assistant.")
    ctx.add_message(role="user", content="are you open on tuesday")
    ctx.add_message(role="assistant", content="Which branch?")
    ctx.add_message(role="user", content="Pune")
    base_url = chat.base_url("/api/v1")

    ours = openai_compat.OpenAICompatibleLLM(model="vendor/model", base_url=base_url, api_key=OPENROUTER_KEY)
    text, calls, usage = "", [], None
    try:
        async with ours.chat(chat_ctx=ctx, tools=[opening_hours], tool_choice="auto", conn_options=FAST_RETRY) as s:
            async for chunk in s:
                text += (chunk.delta.content or "") if chunk.delta else ""
                calls += (chunk.delta.tool_calls or []) if chunk.delta else []
                usage = chunk.usage or usage
    finally:
        await ours.aclose()

    messages, _ = ctx.to_provider_format(format="openai")
    tools = llm.ToolContext([opening_hours]).parse_function_tools("openai", strict=True)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=OPENROUTER_KEY, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="vendor/model",
            # livekit's OpenAI-format dicts, typed for the SDK
            messages=cast("list[openai.types.chat.ChatCompletionMessageParam]", messages),
            tools=cast("list[openai.types.chat.ChatCompletionToolParam]", tools),
            tool_choice="auto",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    ours_request, sdk_request = chat.requests
    assert ours_request.body == sdk_request.body
    assert ours_request.headers["Authorization"] == sdk_request.headers["Authorization"]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert text == "".join(d.content or "" for d in deltas) == "Let me check."
    sdk_calls = [t for d in deltas for t in d.tool_calls or ()]
    assert [(c.name, c.arguments) for c in calls] == [("opening_hours", '{"day": "tuesday"}')]
    assert sdk_calls[0].function is not None and sdk_calls[0].function.name == "opening_hours"
    assert "".join((t.function.arguments or "") for t in sdk_calls if t.function) == calls[0].arguments
    sdk_usage = chunks[-1].usage
    assert usage is not None and sdk_usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (sdk_usage.prompt_tokens, sdk_usage.completion_tokens)


@llm.function_tool
async def opening_hours(day: str, branch: str) -> str:
    """When a branch opens on a day."""
    return "9 to 5"


def test_unknown_and_unavailable_models_are_typed_errors(settings: ProviderSettings) -> None:
    with pytest.raises(UnknownLLMModelError, match="gpt-nonsense"):
        build_llm("gpt-nonsense", settings)
    with pytest.raises(LLMModelUnavailableError, match="maintenance"):
        build_llm("kimi-k2.5-fast", settings)


def test_a_route_without_its_key_says_which_setting_is_missing() -> None:
    with pytest.raises(ProviderConfigError, match="CLARIFAI_PAT"):
        build_llm("kimi-k2.5", ProviderSettings())
    with pytest.raises(ProviderConfigError, match="OPENROUTER_API_KEY"):
        build_llm("meta-llama/llama-3.3-70b-instruct", ProviderSettings())


async def test_a_server_error_before_any_text_is_retried(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.fail_next(500)
    chat.script_replies("Second time lucky.")
    reply = await ask(build_llm("kimi-k2.5", settings))

    assert reply.text == "Second time lucky."
    assert len(chat.requests) == 2


async def test_persistent_rate_limiting_fails_with_the_status(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.fail_next(429, times=5, retry_after=1)
    with pytest.raises(APIError) as info:
        await ask(build_llm("kimi-k2.5", settings))

    cause = info.value.__cause__ if not isinstance(info.value, APIStatusError) else info.value
    assert isinstance(cause, APIStatusError) and cause.status_code == 429
    assert len(chat.requests) == 3  # one try and the two retries the options allow


async def test_a_stream_cut_mid_reply_fails_instead_of_repeating_the_reply(
    chat: FakeChatServer, settings: ProviderSettings
) -> None:
    chat.script_replies("This reply will be cut in the middle.")
    chat.drop_next_stream(after_tokens=3)
    with pytest.raises(APIConnectionError):
        await ask(build_llm("kimi-k2.5", settings))

    assert len(chat.requests) == 1  # text was already spoken: a retry would repeat it


async def test_a_malformed_chunk_fails_the_turn(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.script_replies("Some words and then garbage.")
    chat.malform_next_stream(after_tokens=2)
    with pytest.raises(APIError):
        await ask(build_llm("kimi-k2.5", settings))


async def test_slow_first_token_shows_in_the_ttft_metric(chat: FakeChatServer, settings: ProviderSettings) -> None:
    chat.first_token_delay_s = 0.3
    chat.script_replies("Finally.")
    reply = await ask(build_llm("kimi-k2.5", settings))

    [metrics] = reply.metrics
    assert metrics.ttft >= 0.3


async def test_sessions_sharing_a_route_keep_working_as_others_close(
    chat: FakeChatServer, settings: ProviderSettings
) -> None:
    # Sessions on one loop share the route's connections; one hanging up must not cut the rest off.
    first, second = build_llm("kimi-k2.5", settings), build_llm("kimi-k2.5", settings)
    chat.script_replies("One.", "Two.", "Three.")

    assert (await ask(first)).text == "One."
    assert (await ask(second)).text == "Two."
    assert (await ask(build_llm("kimi-k2.5", settings))).text == "Three."
