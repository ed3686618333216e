"""Backchannels: a caller's "haan" over the agent neither stops it nor becomes a turn; anything
else still interrupts. The gate is driven by scripted STT events; whole conversations run through
the real Sarvam and LLM clients against the loopback fakes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from livekit.agents import stt

from agent_worker import catalog, contracts
from agent_worker.backchannels import BackchannelGate, Backchannels, GateHooks
from agent_worker.conversation import Conversation
from agent_worker.provider_settings import ProviderSettings, SpeechMode
from agent_worker.tests.conftest import Call, RecordingObserver
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam

LONG_REPLY = " ".join(f"Point {n} of our clinic's services is described in this sentence." for n in range(8))


def for_language(language: str, *extra: str) -> Backchannels:
    return Backchannels.for_session(
        contracts.SessionConfig(language=language, backchannels={"extra_phrases": list(extra)})  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("hi-IN", "haan"),
        ("hi-IN", "Achha ji."),
        ("hi-IN", "हाँ जी, ठीक है।"),
        ("hi-IN", "hmmm okay"),
        ("en-IN", "theek hai"),
        ("ta-IN", "சரி சரி"),
        ("te-IN", "అవును"),
        ("bn-IN", "হ্যাঁ, আচ্ছা"),
        ("mr-IN", "हो, बरोबर"),
        ("kn-IN", "ಹೌದು ಸರಿ"),
        ("ml-IN", "ശരി"),
        ("gu-IN", "હા બરાબર"),
        ("pa-IN", "ਹਾਂ ਜੀ"),
        ("od-IN", "ହଁ"),
    ],
)
def test_acknowledgements_in_each_language_are_backchannels(language: str, said: str) -> None:
    assert for_language(language).matches(said)


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("hi-IN", "nahi"),
        ("hi-IN", "haan lekin mera ek sawaal hai"),
        ("hi-IN", "रुको"),
        ("en-IN", "wait"),
        ("en-IN", "umm can you repeat that"),
        ("ta-IN", "இல்லை"),
        ("te-IN", "ఆగండి"),
        ("en-IN", "okay okay okay okay okay okay okay"),  # longer than any acknowledgement
    ],
)
def test_requests_negations_and_long_utterances_are_not(language: str, said: str) -> None:
    assert not for_language(language).matches(said)


def test_every_required_language_has_a_list_and_a_session_adds_its_own() -> None:
    required = {"hi-IN", "ta-IN", "te-IN", "bn-IN", "mr-IN", "kn-IN", "ml-IN", "gu-IN", "pa-IN", "od-IN", "en-IN"}
    assert required <= set(catalog.backchannel_languages())
    assert not for_language("hi-IN").matches("bas bas")
    assert for_language("hi-IN", "bas bas").matches("Bas bas!")


@dataclass
class ScriptedHooks:
    can_pause: bool = True
    calls: list[str] = field(default_factory=list)
    said: list[tuple[str, str]] = field(default_factory=list)

    def hooks(self) -> GateHooks:
        def pause() -> bool:
            self.calls.append("pause")
            return self.can_pause

        return GateHooks(
            pause=pause,
            resume=lambda: self.calls.append("resume"),
            interrupt=lambda started_at: self.calls.append("interrupt"),
            on_backchannel=lambda text, language: self.said.append((text, language)),
        )


def start() -> stt.SpeechEvent:
    return stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH, speech_start_time=1000.0)


def end() -> stt.SpeechEvent:
    return stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH)


def text(kind: stt.SpeechEventType, words: str, language: str = "hi-IN") -> stt.SpeechEvent:
    return stt.SpeechEvent(type=kind, alternatives=[stt.SpeechData(language=language, text=words)])  # type: ignore[arg-type]


def usage() -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.RECOGNITION_USAGE, recognition_usage=stt.RecognitionUsage(audio_duration=0.4)
    )


def run(gate: BackchannelGate, events: list[stt.SpeechEvent]) -> list[stt.SpeechEvent]:
    return [passed for event in events for passed in gate.feed(event)]


FINAL = stt.SpeechEventType.FINAL_TRANSCRIPT
INTERIM = stt.SpeechEventType.INTERIM_TRANSCRIPT


def test_a_backchannel_over_the_agent_reaches_the_session_as_nothing_and_resumes_it() -> None:
    scripted = ScriptedHooks()
    gate = BackchannelGate(for_language("hi-IN"), scripted.hooks())
    billed = usage()

    passed = run(gate, [start(), billed, text(FINAL, "हाँ जी"), end()])

    assert passed == [billed]  # the STT's billing still counts
    assert scripted.calls == ["pause", "resume"]
    assert scripted.said == [("हाँ जी", "hi-IN")]


def test_words_that_are_not_a_backchannel_interrupt_and_reach_the_session_in_order() -> None:
    scripted = ScriptedHooks()
    gate = BackchannelGate(for_language("hi-IN"), scripted.hooks())
    events = [start(), text(FINAL, "haan lekin ek sawaal hai"), end()]

    passed = run(gate, events)

    assert [e.type for e in passed] == [e.type for e in events]
    assert scripted.calls == ["pause", "interrupt"]
    assert scripted.said == []


def test_interim_words_decide_as_soon_as_they_cannot_be_a_backchannel() -> None:
    scripted = ScriptedHooks()
    gate = BackchannelGate(for_language("hi-IN"), scripted.hooks())

    assert run(gate, [start(), text(INTERIM, "theek")]) == []  # "theek hai" may follow
    assert scripted.calls == ["pause"]
    passed = run(gate, [text(INTERIM, "theek hai par ruko")])

    assert [e.type for e in passed] == [stt.SpeechEventType.START_OF_SPEECH, INTERIM, INTERIM]
    assert scripted.calls == ["pause", "interrupt"]
    # The rest of the utterance goes straight through.
    assert [e.type for e in run(gate, [text(FINAL, "theek hai par ruko"), end()])] == [FINAL, end().type]


def test_speech_without_words_resumes_the_agent() -> None:
    scripted = ScriptedHooks()
    gate = BackchannelGate(for_language("en-IN"), scripted.hooks())

    assert run(gate, [start(), end()]) == []
    assert scripted.calls == ["pause", "resume"]
    assert scripted.said == []


def test_speech_the_agent_cannot_pause_for_passes_straight_through() -> None:
    scripted = ScriptedHooks(can_pause=False)
    gate = BackchannelGate(for_language("hi-IN"), scripted.hooks())
    events = [start(), text(FINAL, "haan"), end()]

    assert run(gate, events) == events
    assert scripted.calls == ["pause"]


# ---------------------------------------------------------------- whole conversations on the fakes


SARVAM_KEY = "sk-sarvam-test"
CLARIFAI_PAT = "clarifai-pat-test"


@pytest.fixture(scope="module")
def sarvam_server() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=200) as fake:
        yield fake


@pytest.fixture(scope="module")
def chat_server() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key=CLARIFAI_PAT) as fake:
        yield fake


@pytest.fixture
def settings(sarvam: FakeSarvam, chat: FakeChatServer) -> ProviderSettings:
    return ProviderSettings(
        speech_providers=SpeechMode.REAL,
        sarvam_api_key=SARVAM_KEY,
        sarvam_base_url=sarvam.http_url,
        sarvam_ws_url=sarvam.ws_url,
        clarifai_pat=CLARIFAI_PAT,
        clarifai_base_url=chat.base_url("/v2/ext/openai/v1"),
    )


@dataclass
class BackchannelObserver(RecordingObserver):
    backchannels: list[tuple[str, str]] = field(default_factory=list)

    async def on_backchannel(self, text: str, language: str) -> None:
        self.backchannels.append((text, language))
        self._touch()


async def long_reply_playing(
    calls, settings: ProviderSettings, sarvam: FakeSarvam, chat: FakeChatServer, *, language: str, **backchannels
) -> tuple[Call, BackchannelObserver, float]:
    """A call whose agent is in the middle of ``LONG_REPLY``; returns when it starts playing, with
    the TTS audio made before it."""
    chat.script_replies("Hello!", LONG_REPLY, "Of course, go ahead.")
    observer = BackchannelObserver()
    config = contracts.SessionConfig(language=language, backchannels=backchannels)  # type: ignore[arg-type]
    conversation = Conversation(
        session_id="bc", config=config, providers=settings, observer=observer, aec_warmup_seconds=None
    )
    call: Call = await calls(conversation, observer)
    await observer.wait_for(lambda: observer.final("agent") != [] and observer.agent_states[-1] == "listening")
    await call.caller.say(0.5)
    await observer.wait_for(lambda: len(observer.final("user")) == 1)
    audio_before = sarvam.tts_audio_seconds
    await observer.wait_for(lambda: observer.agent_states[-1] == "speaking")
    return call, observer, audio_before


@pytest.mark.parametrize(
    ("language", "acknowledgements"),
    [("hi-IN", ["हाँ जी", "achha, theek hai"]), ("ta-IN", ["சரி", "ஆமா"]), ("bn-IN", ["হ্যাঁ", "okay"])],
)
async def test_backchannels_over_the_agent_neither_stop_it_nor_become_turns(
    settings, sarvam, chat, calls, language: str, acknowledgements: list[str]
) -> None:
    sarvam.script_transcripts("tell me about the clinic", *acknowledgements)
    call, observer, audio_before = await long_reply_playing(calls, settings, sarvam, chat, language=language)
    speaking_since = call.caller.played[-1][0]

    for done, _ in enumerate(acknowledgements):
        await call.caller.say(0.3)
        await observer.wait_for(lambda: len(observer.backchannels) + observer.interruptions > done)  # noqa: B023
    await observer.wait_for(lambda: len(observer.final("agent")) == 2 and observer.agent_states[-1] == "listening")

    assert observer.interruptions == 0
    assert [text for text, _ in observer.backchannels] == acknowledgements
    assert [u.text for u in observer.final("user")] == ["tell me about the clinic"]  # no turn for them
    assert len(chat.requests) == 2  # and nothing for the LLM to answer
    assert observer.final("agent")[1].text == LONG_REPLY
    # Resumed, not restarted: the caller heard the reply's audio once, all of it.
    reply_audio = sarvam.tts_audio_seconds - audio_before
    assert call.caller.played_seconds(since=speaking_since) == pytest.approx(reply_audio, abs=0.05)
    assert sarvam.violations == []


async def test_a_real_interruption_still_stops_the_agent(settings, sarvam, chat, calls) -> None:
    sarvam.script_transcripts("tell me about the clinic", "haan", "रुको, मेरा एक सवाल है")
    call, observer, _ = await long_reply_playing(calls, settings, sarvam, chat, language="hi-IN")
    speaking_since = call.caller.played[-1][0]

    await call.caller.say(0.3)
    await observer.wait_for(lambda: len(observer.backchannels) == 1)
    await call.caller.say(0.6)
    await observer.wait_for(lambda: observer.interruptions == 1)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 3)

    assert [u.text for u in observer.final("user")] == ["tell me about the clinic", "रुको, मेरा एक सवाल है"]
    assert call.caller.played_seconds(since=speaking_since) < len(LONG_REPLY) * sarvam.tts_ms_per_char / 1000 / 2
    assert observer.final("agent")[2].text == "Of course, go ahead."


async def test_with_backchannels_disabled_any_speech_over_the_agent_stops_it(settings, sarvam, chat, calls) -> None:
    sarvam.script_transcripts("tell me about the clinic", "haan")
    call, observer, _ = await long_reply_playing(calls, settings, sarvam, chat, language="hi-IN", enabled=False)

    await call.caller.say(0.3)
    await observer.wait_for(lambda: observer.interruptions == 1)
    await observer.wait_for(lambda: len(observer.final("agent")) >= 3)

    assert observer.backchannels == []
    assert [u.text for u in observer.final("user")] == ["tell me about the clinic", "haan"]
    assert observer.final("agent")[2].text == "Of course, go ahead."
