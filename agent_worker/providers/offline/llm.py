"""A scripted stand-in for the language model: deterministic, streaming, and honest about it.

With no model configured there is nothing to answer with, so the offline demo proves the loop
instead: it greets, then repeats what it heard ("You said: …") and says it is the offline demo,
so a tester can hear speech go in, get transcribed and come back. Replies stream word by word at
roughly a real model's pace, with token usage (words, here) on the last chunk, so turn metrics
and usage totals behave as with a real model. Cancelling the stream (the caller barged in)
stops it at the next word, before the usage chunk, as an abandoned real request would.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm, utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from agent_worker.providers import OFFLINE_LLM_MODEL, OFFLINE_PROVIDER
from agent_worker.providers.offline import notice

# About 50 tokens a second, a fast hosted model's pace: quick, yet visibly streamed.
WORD_INTERVAL_S = 0.02

GREETING = "Hello! This is the CallMissed offline demo, with no real models set up. Say something and I will repeat it."
ECHO = "You said: {text}. I am the offline demo, with no real language model, so I only repeat what I hear."
NOT_HEARD = "Sorry, I did not catch that. I am the offline demo, so please speak clearly and try again."
GOODBYE = "Thank you for trying the CallMissed offline demo. Goodbye!"


def compose_reply(chat_ctx: llm.ChatContext) -> str:
    """The scripted answer to the conversation so far.

    A turn's own instructions (the greeting or goodbye prompt) arrive as the newest system
    message; a caller's turn is the newest user message."""
    messages = [item for item in chat_ctx.items if isinstance(item, llm.ChatMessage)]
    # The first message is the agent's standing prompt; a later system message is this turn's.
    turn_instructions = messages[-1] if len(messages) > 1 and messages[-1].role in ("system", "developer") else None
    if turn_instructions is not None and "goodbye" in (turn_instructions.text_content or "").lower():
        return GOODBYE
    user_turns = [m for m in messages if m.role == "user"]
    if not user_turns:
        return GREETING
    heard = (user_turns[-1].text_content or "").strip().rstrip(".!?,;: ")
    return ECHO.format(text=heard) if heard else NOT_HEARD


def count_words(chat_ctx: llm.ChatContext) -> int:
    """What the "prompt tokens" of a scripted reply are: the words of every message."""
    return sum(len((item.text_content or "").split()) for item in chat_ctx.items if isinstance(item, llm.ChatMessage))


class ScriptedLLM(llm.LLM):
    @property
    def model(self) -> str:
        return OFFLINE_LLM_MODEL

    @property
    def provider(self) -> str:
        return OFFLINE_PROVIDER

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ScriptedLLMStream:
        notice.announce("LLM", "a scripted echo with no language model")
        return ScriptedLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class ScriptedLLMStream(llm.LLMStream):
    async def _run(self) -> None:
        request_id = utils.shortuuid()
        words = compose_reply(self._chat_ctx).split()
        for index, word in enumerate(words):
            if index:
                # The pause is also where a cancelled (interrupted) reply stops.
                await asyncio.sleep(WORD_INTERVAL_S)
            token = word if index == 0 else " " + word
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=token))
            )
        prompt_words = count_words(self._chat_ctx)
        usage = llm.CompletionUsage(
            completion_tokens=len(words), prompt_tokens=prompt_words, total_tokens=prompt_words + len(words)
        )
        self._event_ch.send_nowait(llm.ChatChunk(id=request_id, usage=usage))
