"""An energy voice-activity detector that cuts a 16-bit mono PCM stream into utterances.

pocketsphinx has no streaming endpointer worth using for turn-taking, and the session runs
with ``turn_detection="stt"``, so the offline STT decides itself when the caller starts and
stops talking. A window is speech when its RMS is clearly above both an absolute floor and the
background level: the quietest window of the last few seconds of non-speech (minimum
statistics, so a steady hiss or hum sets the floor and never counts as speech). Speech starts
after a short run of speech windows (so a click does not barge in on the agent) and ends after
``end_silence_ms`` without any.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

WINDOW_MS = 20
# About -40 dBFS: quieter than any voice on a phone line, louder than line hiss.
MIN_SPEECH_RMS = 300.0
# A window must be this many times the background level to count as speech (~ +10 dB).
NOISE_RATIO = 3.0
NOISE_HISTORY_MS = 3000  # how far back the background level looks
START_MS = 100  # consecutive speech needed to call it the start of an utterance
PREROLL_MS = 300  # audio kept from before the start, so the first phoneme is not clipped
# The caller stopped: this long without a speech window. A comma's pause is ~400 ms of silence.
END_SILENCE_MS = 500
MAX_UTTERANCE_MS = 20_000  # cut very long speech so decoding and memory stay bounded


@dataclass(frozen=True)
class SpeechStarted:
    pcm: bytes  # the pre-roll and the start run: already part of the utterance


@dataclass(frozen=True)
class SpeechAudio:
    pcm: bytes


@dataclass(frozen=True)
class SpeechEnded:
    pass


VADEvent = SpeechStarted | SpeechAudio | SpeechEnded


class EnergyVAD:
    def __init__(self, *, sample_rate: int = 16000, end_silence_ms: int = END_SILENCE_MS) -> None:
        self._window_bytes = sample_rate * WINDOW_MS // 1000 * 2
        self._start_windows = START_MS // WINDOW_MS
        self._end_windows = end_silence_ms // WINDOW_MS
        self._max_windows = MAX_UTTERANCE_MS // WINDOW_MS
        self._pending = bytearray()
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_MS // WINDOW_MS)
        self._run: list[bytes] = []  # speech windows not yet confirmed as an utterance
        # Frozen during speech, so a long utterance never becomes its own background.
        self._levels: deque[float] = deque(maxlen=NOISE_HISTORY_MS // WINDOW_MS)
        self._in_speech = False
        self._silent_windows = 0
        self._utterance_windows = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def push(self, pcm: bytes) -> list[VADEvent]:
        self._pending += pcm
        events: list[VADEvent] = []
        while len(self._pending) >= self._window_bytes:
            window = bytes(self._pending[: self._window_bytes])
            del self._pending[: self._window_bytes]
            events.extend(self._window(window))
        return _merge_audio(events)

    def flush(self) -> list[VADEvent]:
        """The input paused or ended: close any open utterance now."""
        events: list[VADEvent] = []
        if self._in_speech:
            if self._pending:
                events.append(SpeechAudio(bytes(self._pending)))
            events.append(self._end())
        self._pending.clear()
        self._run.clear()
        return events

    def _window(self, window: bytes) -> list[VADEvent]:
        rms = _rms(window)
        if not self._in_speech:
            self._levels.append(rms)
        speech = rms >= max(MIN_SPEECH_RMS, min(self._levels) * NOISE_RATIO)
        if not self._in_speech:
            return self._while_quiet(window, speech)
        self._utterance_windows += 1
        self._silent_windows = 0 if speech else self._silent_windows + 1
        events: list[VADEvent] = [SpeechAudio(window)]
        if self._silent_windows >= self._end_windows or self._utterance_windows >= self._max_windows:
            events.append(self._end())
        return events

    def _while_quiet(self, window: bytes, speech: bool) -> list[VADEvent]:
        if not speech:
            self._preroll.extend(self._run)
            self._run.clear()
            self._preroll.append(window)
            return []
        self._run.append(window)
        if len(self._run) < self._start_windows:
            return []
        self._in_speech = True
        self._silent_windows = 0
        self._utterance_windows = len(self._run)
        started = SpeechStarted(b"".join([*self._preroll, *self._run]))
        self._preroll.clear()
        self._run.clear()
        return [started]

    def _end(self) -> SpeechEnded:
        self._in_speech = False
        self._silent_windows = 0
        self._utterance_windows = 0
        return SpeechEnded()


def _rms(window: bytes) -> float:
    samples = np.frombuffer(window, dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def _merge_audio(events: list[VADEvent]) -> list[VADEvent]:
    """Adjacent audio windows as one chunk: fewer hand-offs to the decoder thread."""
    merged: list[VADEvent] = []
    for event in events:
        if isinstance(event, SpeechAudio) and merged and isinstance(merged[-1], SpeechAudio):
            merged[-1] = SpeechAudio(merged[-1].pcm + event.pcm)
        else:
            merged.append(event)
    return merged
