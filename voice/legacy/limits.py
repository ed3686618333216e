"""The legacy socket's limits, as settings.py read them from the environment at start-up
(``LEGACY_WS_*``, documented in docs/legacy-websocket.md)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class LegacyWsLimits:
    config_timeout_seconds: float  # LEGACY_WS_CONFIG_TIMEOUT_SECONDS
    max_frame_seconds: float  # LEGACY_WS_MAX_FRAME_SECONDS
    # How far the client's audio may run ahead of the wall clock (bursts, network jitter).
    max_ahead_seconds: float  # LEGACY_WS_MAX_AHEAD_SECONDS
    # How far behind the client may fall before the gap is filled with silence.
    underrun_fill_seconds: float  # LEGACY_WS_UNDERRUN_FILL_SECONDS
    # Caller audio the pipeline may fall behind by before the oldest is dropped.
    input_buffer_seconds: float  # LEGACY_WS_INPUT_BUFFER_SECONDS
    usage_report_seconds: float  # LEGACY_WS_USAGE_REPORT_SECONDS
    # How often a call reads its own row, so one ended elsewhere stops even if the control
    # message to this socket was lost.
    session_check_seconds: float  # LEGACY_WS_SESSION_CHECK_SECONDS

    @classmethod
    def from_settings(cls) -> LegacyWsLimits:
        return cls(
            config_timeout_seconds=settings.LEGACY_WS_CONFIG_TIMEOUT_SECONDS,
            max_frame_seconds=settings.LEGACY_WS_MAX_FRAME_SECONDS,
            max_ahead_seconds=settings.LEGACY_WS_MAX_AHEAD_SECONDS,
            underrun_fill_seconds=settings.LEGACY_WS_UNDERRUN_FILL_SECONDS,
            input_buffer_seconds=settings.LEGACY_WS_INPUT_BUFFER_SECONDS,
            usage_report_seconds=settings.LEGACY_WS_USAGE_REPORT_SECONDS,
            session_check_seconds=settings.LEGACY_WS_SESSION_CHECK_SECONDS,
        )

    def max_frame_bytes(self, sample_rate: int) -> int:
        return int(sample_rate * self.max_frame_seconds) * 2
