"""What one streamed LLM reply costs the event loop's CPU: our thin client vs livekit's plugin.

    .venv/bin/python -m bench.llm_client_cpu [--replies 40] [--words 120] [--turns 20] [--rounds 3]

    # the plugin is not a dependency of the project; install it beside the venv, not into it:
    .venv/bin/pip install --no-deps --target /tmp/lk-openai livekit-plugins-openai==1.8.9
    PYTHONPATH=/tmp/lk-openai .venv/bin/python -m bench.llm_client_cpu

The chat fake (``FakeChatServer``) runs on its own thread and streams a reply of ``--words``
words, one SSE chunk per word, with the final usage chunk. Each client streams ``--replies``
replies for a chat context of ``--turns`` user/assistant exchanges behind a system prompt, as a
voice session's ``AgentSession`` does: ``llm.chat(chat_ctx=…)`` and iterating the stream to its
end. Measured: CPU seconds of the client's thread (``time.thread_time``: the fake's thread is
not counted) per reply and per streamed token, p50 over ``--rounds`` rounds, clients interleaved
per round so drift on the shared machine hits each alike.

* baseline = reading the same response with bare aiohttp (POST, drain the body, no parsing) —
  the floor any client pays for the bytes;
* ours = ``agent_worker.providers.openai_compat.OpenAICompatibleLLM``;
* plugin = ``livekit.plugins.openai.LLM`` (the ``openai`` SDK underneath), when importable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
from livekit.agents import llm

from agent_worker.providers.openai_compat import OpenAICompatibleLLM
from testsupport.fakes.openai_chat import FakeChatServer

KEY = "bench-key"
MODEL = "vendor/model"


def chat_context(turns: int) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are a helpful voice assistant for a clinic in Pune. " * 8)
    for i in range(turns):
        ctx.add_message(role="user", content=f"Question {i}: when is the doctor free on day {i}?")
        ctx.add_message(role="assistant", content=f"On day {i} the doctor is free from nine to five.")
    ctx.add_message(role="user", content="And tomorrow?")
    return ctx


async def drive_llm(model: llm.LLM, ctx: llm.ChatContext, replies: int) -> tuple[float, int]:
    tokens = 0
    start = time.thread_time()
    for _ in range(replies):
        async with model.chat(chat_ctx=ctx) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    tokens += len(chunk.delta.content.split())
    spent = time.thread_time() - start
    await model.aclose()
    return spent, tokens


async def drive_raw(base_url: str, ctx: llm.ChatContext, replies: int, words: int) -> tuple[float, int]:
    messages, _ = ctx.to_provider_format(format="openai")
    body = json.dumps({"model": MODEL, "messages": messages, "stream": True, "stream_options": {"include_usage": True}})
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    start = time.thread_time()
    async with aiohttp.ClientSession() as http:
        for _ in range(replies):
            async with http.post(base_url + "/chat/completions", data=body, headers=headers) as response:
                async for _block in response.content.iter_any():
                    pass
    return time.thread_time() - start, replies * words


def plugin_factory(base_url: str) -> Callable[[], llm.LLM] | None:
    try:
        from livekit.plugins import openai as lk_openai
    except ImportError:
        return None
    return lambda: lk_openai.LLM(model=MODEL, base_url=base_url, api_key=KEY)


async def main(args: argparse.Namespace) -> None:
    reply = " ".join(f"word{i}" for i in range(args.words))
    ctx = chat_context(args.turns)
    with FakeChatServer(api_key=KEY, default_reply=reply) as fake:
        base_url = fake.base_url("/api/v1")
        clients: dict[str, Callable[[], Awaitable[tuple[float, int]]]] = {
            "baseline (aiohttp, no parsing)": lambda: drive_raw(base_url, ctx, args.replies, args.words),
            "ours (openai_compat)": lambda: drive_llm(
                OpenAICompatibleLLM(model=MODEL, base_url=base_url, api_key=KEY), ctx, args.replies
            ),
        }
        plugin = plugin_factory(base_url)
        if plugin is not None:
            clients["plugin (livekit-plugins-openai)"] = lambda: drive_llm(plugin(), ctx, args.replies)
        for drive in clients.values():  # warm-up: imports, first connections
            await drive()
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, drive in clients.items():
                results[name].append(await drive())

    print(f"{args.replies} replies x {args.words} tokens, {args.turns} turns of context, {args.rounds} rounds")
    if plugin is None:
        print("(livekit-plugins-openai not importable: plugin row skipped)")
    print(f"{'client':34} {'CPU ms/reply':>13} {'CPU us/token':>13}")
    for name, runs in results.items():
        per_reply = statistics.median(spent / args.replies for spent, _ in runs) * 1e3
        per_token = statistics.median(spent / max(tokens, 1) for spent, tokens in runs) * 1e6
        print(f"{name:34} {per_reply:13.2f} {per_token:13.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=40)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
