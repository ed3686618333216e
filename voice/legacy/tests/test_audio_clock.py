"""The caller's audio clock on a hand-driven clock: what a caller streaming too fast, too slow
or in bursts gets, with no wall clock involved."""

from __future__ import annotations

from voice.legacy.audio_clock import CallerAudioClock

RATE = 16000
TICK = 0.125  # a binary fraction: the hand clock's sums stay exact
FRAME = 0.025  # seconds per frame the caller sends
FRAME_BYTES = int(RATE * FRAME) * 2


class HandClock:
    def __init__(self, at: float = 1000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


def make_clock(now: HandClock, *, max_ahead: float = 2.0, fill_after: float = 0.5) -> CallerAudioClock:
    return CallerAudioClock(
        sample_rate=RATE,
        received_at=now(),
        max_ahead_seconds=max_ahead,
        underrun_fill_seconds=fill_after,
        tick_seconds=TICK,
        now=now,
    )


def stream(clock: CallerAudioClock, now: HandClock, seconds: float) -> list[float]:
    """Send ``seconds`` of audio in frames at real time; the "too fast" verdicts met."""
    verdicts = []
    for _ in range(round(seconds / FRAME)):
        now.advance(FRAME)
        ahead = clock.receive(FRAME_BYTES)
        if ahead is not None:
            verdicts.append(ahead)
    return verdicts


def tick(clock: CallerAudioClock, now: HandClock, *, late_by: float = 0.0) -> int:
    """One tick that slept TICK (and ``late_by`` more); the samples of silence it fills."""
    due = now() + TICK
    now.advance(TICK + late_by)
    fill = clock.tick(due=due)
    return 0 if fill is None else fill.samples


def test_a_caller_streaming_in_real_time_is_never_too_fast_nor_filled() -> None:
    now = HandClock()
    clock = make_clock(now)
    clock.listening()
    filled = 0
    for _ in range(80):  # 10 s
        assert stream(clock, now, TICK) == []
        filled += tick(clock, now, late_by=-TICK)  # the frames took the tick's time already
    assert filled == 0


def test_audio_more_than_the_allowance_ahead_of_real_time_is_too_fast() -> None:
    now = HandClock()
    clock = make_clock(now, max_ahead=2.0)
    assert clock.receive(RATE * 2) is None  # 1 s at once: a burst within the allowance
    assert clock.receive(RATE * 2) is None  # 2 s ahead: the limit itself is allowed
    ahead = clock.receive(FRAME_BYTES)
    assert ahead == 2.0 + FRAME


def test_the_time_the_session_took_to_start_is_not_counted_against_the_caller() -> None:
    now = HandClock()
    clock = make_clock(now)
    now.advance(3.0)  # the first session of a process loads its models
    # The caller streamed from the config on; its 3 s of audio arrive together now.
    assert clock.receive(RATE * 2 * 3) is None


def test_a_silent_caller_is_filled_with_silence_and_warned_about_once() -> None:
    now = HandClock()
    clock = make_clock(now, fill_after=0.5)
    clock.listening()
    fills = []
    for _ in range(10):
        due = now() + TICK
        now.advance(TICK)
        fill = clock.tick(due=due)
        if fill is not None:
            fills.append(fill)
    # Nothing until more than 0.5 s passed; a fill covers the whole gap, so the next one waits
    # for another 0.5 s of silence: 1.25 s of it, filled twice, warned about once.
    assert [(f.behind_seconds, f.samples, f.first) for f in fills] == [(0.625, 10000, True), (0.625, 10000, False)]
    assert fills[0].pcm == b"\x00\x00" * 10000


def test_nothing_is_filled_before_the_pipeline_listens() -> None:
    now = HandClock()
    clock = make_clock(now)
    assert tick(clock, now) == 0
    now.advance(10.0)
    assert tick(clock, now) == 0


def test_a_tick_that_woke_late_fills_nothing_the_next_one_decides() -> None:
    now = HandClock()
    clock = make_clock(now)
    clock.listening()
    now.advance(1.0)
    assert tick(clock, now, late_by=TICK) == 0  # this process was busy: the frames may be unread
    assert stream(clock, now, 0.0) == []
    clock.receive(RATE * 2)  # ... and they were: a second of audio waiting in the socket
    assert tick(clock, now) == 0  # caught up, nothing owed


def test_filled_silence_never_makes_a_late_burst_too_fast() -> None:
    now = HandClock()
    clock = make_clock(now, max_ahead=0.5)
    clock.listening()
    now.advance(1.0)
    filled = tick(clock, now)
    assert filled > 0
    # The caller's own audio arrives late, in a burst: our lag, not a client sending too fast.
    assert clock.receive(int(1.125 * RATE) * 2) is None


def test_dropped_audio_is_reported_in_steps_of_half_a_second() -> None:
    clock = make_clock(HandClock())
    assert clock.dropped_to_report(0.0) is None
    assert clock.dropped_to_report(0.4) is None
    assert clock.dropped_to_report(0.6) == 0.6
    assert clock.dropped_to_report(0.9) is None
    assert clock.dropped_to_report(1.1) == 1.1
