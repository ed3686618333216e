"""Backchannels: a caller's "haan", "theek hai", "சரி" or "okay" while the agent speaks.

``BackchannelGate`` sits between the STT and the ``AgentSession``. When the caller starts
speaking over the agent it holds the start-of-speech event back and pauses the agent's audio (the
caller hears the agent stop at once, as with any barge-in). What happens next depends on the
words:

* all of them a backchannel (``Backchannels.matches``), or none at all (a cough, a noise): the
  utterance's events are dropped — the session never sees a user turn — and the agent's audio
  resumes where it paused when the utterance ends;
* anything else: the agent is interrupted and the held events go on to the session in their
  order, so the utterance becomes a user turn exactly as a barge-in did before.

An STT with interim transcripts lets the gate decide as soon as the words can no longer be a
backchannel. Speech that starts while the agent is silent, or over speech that may not be
interrupted, passes straight through. livekit-agents' own false-interruption resume does not
serve here: it resumes only when no words arrive, and any final transcript ends the paused speech
(``AgentActivity.on_final_transcript`` → ``_cancel_speech_pause``); bench/README.md has the run.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from livekit.agents import stt

from agent_worker import catalog, contracts

_REPEATS = re.compile(r"(.)\1{2,}")
# Punctuation, symbols and spaces separate words; format characters (the zero-width joiners some
# Indic spellings carry) belong to no word and are dropped.
_SEPARATORS = {cat: " " for cat in ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl")}
_SEPARATORS |= {"Zp": " ", "Cc": " ", "Cf": ""}


def normalize(text: str) -> list[str]:
    """Words of ``text`` as the matcher compares them: NFC, case-folded, punctuation (the
    danda included) as spaces, a letter held three or more times ("hmmm", "haaan") as two.
    Combining marks stay: Indic vowel signs are letters of the word."""
    text = unicodedata.normalize("NFC", text).casefold()
    text = "".join(_SEPARATORS.get(unicodedata.category(ch), ch) for ch in text)
    return _REPEATS.sub(r"\1\1", text).split()


class Backchannels:
    """The phrases of one session: the catalog's list for its language, English's, and the
    session's own ``extra_phrases``."""

    def __init__(self, phrases: Iterable[str], *, max_words: int = contracts.MAX_BACKCHANNEL_WORDS) -> None:
        self.max_words = max_words
        self._phrases: set[tuple[str, ...]] = set()
        for phrase in phrases:
            words = tuple(normalize(phrase))
            if 0 < len(words) <= max_words:
                self._phrases.add(words)
        self._longest = max((len(p) for p in self._phrases), default=0)
        self._prefixes = {p[:n] for p in self._phrases for n in range(1, len(p) + 1)}

    @classmethod
    def for_session(cls, config: contracts.SessionConfig) -> Backchannels:
        return cls([*catalog.backchannel_phrases(config.language), *config.backchannels.extra_phrases])

    def matches(self, text: str) -> bool:
        """Whether ``text`` is nothing but backchannel phrases ("haan", "haan ji theek hai")."""
        words = normalize(text)
        return 0 < len(words) <= self.max_words and self._split(words) == len(words)

    def may_become(self, text: str) -> bool:
        """Whether more words could still make ``text`` (an interim transcript) a backchannel."""
        words = normalize(text)
        if len(words) > self.max_words:
            return False
        done = self._split(words)
        return done == len(words) or tuple(words[done:]) in self._prefixes

    def _split(self, words: list[str]) -> int:
        """How many leading words split into whole phrases (the longest such prefix)."""
        reachable = [True] + [False] * len(words)
        best = 0
        for start in range(len(words)):
            if not reachable[start]:
                continue
            for length in range(1, min(self._longest, len(words) - start) + 1):
                if tuple(words[start : start + length]) in self._phrases:
                    reachable[start + length] = True
                    best = max(best, start + length)
        return best


@dataclass
class GateHooks:
    """What the gate asks of the conversation. ``pause`` answers False when the agent cannot be
    paused now (not speaking, speech that may not be interrupted, an output that cannot pause):
    the utterance then passes straight through."""

    pause: Callable[[], bool]
    resume: Callable[[], None]
    interrupt: Callable[[float], None]  # the held utterance's start (time.time()), for its transcript
    on_backchannel: Callable[[str, str], None]  # text, language


@dataclass
class _Held:
    events: list[stt.SpeechEvent] = field(default_factory=list)
    final_text: list[str] = field(default_factory=list)
    interim_text: str = ""
    language: str = ""


class BackchannelGate:
    """Feed it every STT event in order; it returns the events the session should see."""

    def __init__(self, backchannels: Backchannels, hooks: GateHooks) -> None:
        self._backchannels = backchannels
        self._hooks = hooks
        self._held: _Held | None = None

    def feed(self, event: stt.SpeechEvent) -> list[stt.SpeechEvent]:
        kind = event.type
        if kind is stt.SpeechEventType.START_OF_SPEECH and self._held is None:
            if self._hooks.pause():
                self._held = _Held(events=[event])
                return []
            return [event]
        held = self._held
        if held is None or kind not in _SPEECH_EVENTS:
            return [event]
        held.events.append(event)
        text = event.alternatives[0].text if event.alternatives else ""
        if event.alternatives and event.alternatives[0].language:
            held.language = str(event.alternatives[0].language)
        if kind in (stt.SpeechEventType.INTERIM_TRANSCRIPT, stt.SpeechEventType.PREFLIGHT_TRANSCRIPT):
            held.interim_text = text
            if self._backchannels.may_become(self._text(held, text)):
                return []
            return self._release()
        if kind is stt.SpeechEventType.FINAL_TRANSCRIPT:
            held.final_text.append(text)
            held.interim_text = ""
            said = self._text(held)
            if not said or self._backchannels.matches(said):
                return []
            return self._release()
        # END_OF_SPEECH (or a new START, which ends an utterance the STT never closed): the
        # words so far were all a backchannel, or there were none.
        self._held = None
        said = self._text(held)
        self._hooks.resume()
        if said.strip():
            self._hooks.on_backchannel(said, held.language)
        if kind is stt.SpeechEventType.START_OF_SPEECH:
            return self.feed(event)
        return []

    def _release(self) -> list[stt.SpeechEvent]:
        assert self._held is not None
        events, self._held = self._held.events, None
        self._hooks.interrupt(events[0].speech_start_time or time.time())
        return events

    @staticmethod
    def _text(held: _Held, interim: str = "") -> str:
        return " ".join([*held.final_text, interim]).strip()


_SPEECH_EVENTS = frozenset(
    {
        stt.SpeechEventType.START_OF_SPEECH,
        stt.SpeechEventType.INTERIM_TRANSCRIPT,
        stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
        stt.SpeechEventType.FINAL_TRANSCRIPT,
        stt.SpeechEventType.END_OF_SPEECH,
    }
)
