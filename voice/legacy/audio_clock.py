"""The caller's audio clock: the legacy socket's caller audio measured against real time.

A caller streams PCM at the pace it plays. Counted against the config's arrival, audio more than
``max_ahead_seconds`` ahead of real time is a client streaming a file unpaced (refused). Counted
against the moment the pipeline starts listening, audio more than ``underrun_fill_seconds``
behind is a stalled client: the gap is filled with silence, as a phone line never goes quiet
(without audio the STT cannot hear an utterance end). Filled silence never counts as the
caller's: when this server falls behind, the frames waiting in the socket arrive in a burst after
the fill, and that is our lag, not a client sending too fast. For the same reason a tick that
woke late fills nothing: the caller's frames may be waiting unread, and the next tick decides.

Time comes from ``now`` (``time.monotonic`` by default), so tests drive it by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# The caller's lost audio is reported in steps of at least this many seconds.
DROPPED_REPORT_STEP_SECONDS = 0.5


@dataclass(frozen=True)
class SilenceFill:
    """Silence to push for a caller behind real time; ``first`` is the fill to warn about."""

    samples: int
    behind_seconds: float
    first: bool

    @property
    def pcm(self) -> bytes:
        return b"\x00\x00" * self.samples


class CallerAudioClock:
    def __init__(
        self,
        *,
        sample_rate: int,
        received_at: float,
        max_ahead_seconds: float,
        underrun_fill_seconds: float,
        tick_seconds: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sample_rate = sample_rate
        self.max_ahead_seconds = max_ahead_seconds
        self.underrun_fill_seconds = underrun_fill_seconds
        self.tick_seconds = tick_seconds
        self.now = now
        # Audio counts from the config's arrival: what the caller sends while its session is
        # created is not ahead of real time.
        self._received_origin = received_at
        self._listening_origin: float | None = None
        self._caller_seconds = 0.0
        self._filled_seconds = 0.0
        self._underrun_warned = False
        self._dropped_reported = 0.0

    def listening(self) -> None:
        """The pipeline hears the caller from here on (the first session of a process waits for
        the offline models): gaps count from now."""
        self._listening_origin = self.now()

    def receive(self, size_bytes: int) -> float | None:
        """Count a frame of s16 PCM; returns how far ahead of real time the caller is when that is
        more than allowed, else None."""
        self._caller_seconds += size_bytes / 2 / self.sample_rate
        ahead = self._caller_seconds - (self.now() - self._received_origin)
        return ahead if ahead > self.max_ahead_seconds else None

    def tick(self, *, due: float) -> SilenceFill | None:
        """A tick that was due to wake at ``due``: the silence owed to a caller behind real time."""
        if self._listening_origin is None:
            return None
        now = self.now()
        if now - due > self.tick_seconds / 2:
            return None  # woken late: this process was busy, the gap may be ours
        behind = (now - self._listening_origin) - (self._caller_seconds + self._filled_seconds)
        if behind <= self.underrun_fill_seconds:
            return None
        samples = math.floor(behind * self.sample_rate)
        self._filled_seconds += samples / self.sample_rate
        first = not self._underrun_warned
        self._underrun_warned = True
        return SilenceFill(samples=samples, behind_seconds=behind, first=first)

    def dropped_to_report(self, dropped_seconds: float) -> float | None:
        """The caller audio the pipeline dropped so far, when it grew enough since last said."""
        if dropped_seconds - self._dropped_reported < DROPPED_REPORT_STEP_SECONDS:
            return None
        self._dropped_reported = dropped_seconds
        return dropped_seconds
