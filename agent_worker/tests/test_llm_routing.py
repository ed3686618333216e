"""Each LLM route, built by ``build_llm``, against loopback OpenAI-compatible fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError, llm
from livekit.agents.metrics import LLMMetrics

from agent_worker.provider_settings import ProviderConfigError, ProviderSettings
from agent_worker.providers.llm import LLMModelUnavailableError, UnknownLLMModelError, build_llm
from testsupport.fakes.openai_chat import FakeChatServer, ScriptedReply
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


@pytest.fixture
async def chat() -> AsyncIterator[FakeChatServer]:
    async with FakeChatServer(api_key=CLARIFAI_PAT, api_keys=(OPENROUTER_KEY,)) as fake:
        yield fake


@pytest.fixture
async def sarvam() -> AsyncIterator[FakeSarvam]:
    async with FakeSarvam(api_key=SARVAM_KEY) as fake:
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


async def test_kimi_goes_to_clarifai_with_the_pat_and_thinking_disabled(
    chat: FakeChatServer, settings: ProviderSettings
) -> None:
    chat.script_replies("It is sunny in Pune.")
    reply = await ask(build_llm("kimi-k2.5", settings))

    assert reply.text == "It is sunny in Pune."
    [request] = chat.requests
    assert request.path == "/v2/ext/openai/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {CLARIFAI_PAT}"
    assert request.model == KIMI_ON_CLARIFAI
    assert request.body["thinking"] == {"type": "disabled"}
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


async def test_sarvam_105b_goes_to_sarvam_with_its_key_in_both_headers(
    sarvam: FakeSarvam, settings: ProviderSettings
) -> None:
    sarvam.chat.script_replies("Mausam achha hai.")
    reply = await ask(build_llm("sarvam-105b", settings))

    assert reply.text == "Mausam achha hai."
    [request] = sarvam.chat.requests
    assert request.path == "/v1/chat/completions"
    assert request.model == "sarvam-105b"
    assert request.headers["api-subscription-key"] == SARVAM_KEY
    assert request.headers["Authorization"] == f"Bearer {SARVAM_KEY}"
    assert reply.usage is not None
    assert [(reply.usage.prompt_tokens, reply.usage.completion_tokens)] == sarvam.chat.usage_served


async def test_vendor_model_ids_go_to_openrouter_with_reasoning_off(settings: ProviderSettings) -> None:
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
