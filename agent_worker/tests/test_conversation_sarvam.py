"""Whole conversations through the real Sarvam and LLM clients against the loopback fakes:
audio in, audio out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent_worker import contracts
from agent_worker.conversation import Conversation
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from agent_worker.tests.conftest import Call, RecordingObserver
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam

SARVAM_KEY = "sk-sarvam-test"
CLARIFAI_PAT = "clarifai-pat-test"
PROMPT = "You are Asha, the front desk of the Pune clinic. Answer in one short sentence."


@pytest.fixture
async def sarvam() -> AsyncIterator[FakeSarvam]:
    async with FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=200) as fake:
        yield fake


@pytest.fixture
async def chat() -> AsyncIterator[FakeChatServer]:
    async with FakeChatServer(api_key=CLARIFAI_PAT) as fake:
        yield fake


@pytest.fixture
def settings(sarvam: FakeSarvam, chat: FakeChatServer) -> ProviderSettings:
    return ProviderSettings(
        mode=SpeechMode.REAL,
        sarvam_api_key=SARVAM_KEY,
        sarvam_base_url=sarvam.http_url,
        sarvam_ws_url=sarvam.ws_url,
        clarifai_pat=CLARIFAI_PAT,
        clarifai_base_url=chat.base_url("/v2/ext/openai/v1"),
    )


def config(**overrides: object) -> contracts.SessionConfig:
    return contracts.SessionConfig(system_prompt=PROMPT, **overrides)  # type: ignore[arg-type]


async def test_greets_then_answers_the_callers_words(settings, sarvam, chat, calls) -> None:
    chat.script_replies("Namaste! Welcome to the Pune clinic.", "We open at nine in the morning. Anything else?")
    sarvam.script_transcripts("when do you open tomorrow")
    observer = RecordingObserver()
    conversation = Conversation(session_id="s1", config=config(), providers=settings, observer=observer)
    assert conversation.providers_label == "sarvam+clarifai"
    call: Call = await calls(conversation, observer)

    await observer.wait_for(lambda: len(observer.final("agent")) >= 1)
    assert observer.final("agent")[0].text == "Namaste! Welcome to the Pune clinic."
    assert call.caller.played_seconds() > 0.5

    await observer.wait_for(lambda: observer.agent_states[-1:] == ["listening"])
    await call.caller.say(0.8)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 2)

    user = observer.final("user")
    assert [u.text for u in user] == ["when do you open tomorrow"]
    request = chat.requests[-1]
    assert request.messages[0] == {"role": "system", "content": PROMPT}
    assert request.messages[-1]["content"] == "when do you open tomorrow"
    assert observer.final("agent")[1].text == "We open at nine in the morning. Anything else?"
    assert sarvam.violations == []
