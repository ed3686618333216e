"""The lean OpenAI-compatible client's stream parsing, where the chat fakes do not reach."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from livekit.agents import llm
from livekit.agents.llm import utils as llm_utils

from agent_worker.providers.openai_compat import _parse_choice, _sse_batches, _TextRun, _ToolCalls


async def _lines(*lines: bytes) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


async def test_server_sent_events_yield_their_data_and_skip_comments() -> None:
    batches = [
        batch
        async for batch in _sse_batches(
            _lines(
                b": keep-alive\n", b"\n", b'data: {"a": 1}\r\n', b"\r\n", b"event: x\n", b"data:one\n", b"data: two\n"
            )
        )
    ]

    assert batches == [['{"a": 1}'], ["one\ntwo"]]


async def test_events_are_grouped_by_the_read_that_completed_them_wherever_reads_split() -> None:
    stream = "data: é1\n\ndata: 2\n\ndata: 3\n\n".encode()
    cut = stream.index(b"\xa9")  # inside the two bytes of "é"
    batches = [batch async for batch in _sse_batches(_lines(stream[:cut], stream[cut:-4], stream[-4:]))]

    assert batches == [["é1", "2"], ["3"]]


def _text(chunk_id: str, content: str) -> llm.ChatChunk:
    return llm.ChatChunk(id=chunk_id, delta=llm.ChoiceDelta(role="assistant", content=content))


def test_text_that_arrived_together_is_one_chunk_and_anything_else_stays_apart() -> None:
    run = _TextRun()
    assert run.take() is None
    assert run.add(_text("c", "Sure, ")) and run.add(_text("c", "we open"))
    tool_call = llm.FunctionToolCall(name="f", arguments="{}", call_id="1")
    call = llm.ChatChunk(id="c", delta=llm.ChoiceDelta(role="assistant", tool_calls=[tool_call]))
    assert not run.add(call)
    assert not run.add(_text("other", "x"))
    assert not run.add(llm.ChatChunk(id="c", delta=llm.ChoiceDelta(role="assistant", content="x", extra={"k": 1})))
    merged = run.take()
    assert merged is not None and merged.id == "c"
    assert merged.delta is not None and merged.delta.content == "Sure, we open" and merged.delta.role == "assistant"
    assert run.take() is None


def test_a_tool_call_streamed_in_pieces_arrives_as_one_call() -> None:
    thinking, calls = llm_utils.ThinkingTokenFilter(), _ToolCalls()

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}

    start = {"index": 0, "id": "call_1", "function": {"name": "opening_hours", "arguments": '{"day": '}}
    more = {"index": 0, "function": {"arguments": '"monday"}'}}
    assert _parse_choice("c", choice({"tool_calls": [start]}), thinking, calls) is None
    assert _parse_choice("c", choice({"tool_calls": [more]}), thinking, calls) is None
    chunk = _parse_choice("c", choice({}, finish_reason="tool_calls"), thinking, calls)

    assert chunk is not None and chunk.delta is not None
    [call] = chunk.delta.tool_calls
    assert (call.call_id, call.name, call.arguments) == ("call_1", "opening_hours", '{"day": "monday"}')


def test_list_shaped_content_is_spoken_as_its_text() -> None:
    chunk = _parse_choice(
        "c",
        {"delta": {"content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there."}]}},
        llm_utils.ThinkingTokenFilter(),
        _ToolCalls(),
    )

    assert chunk is not None and chunk.delta is not None and chunk.delta.content == "Hello there."
