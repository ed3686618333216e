"""Pipeline metrics, observed by the conversation itself in whichever process runs it.

Django-free: the agent worker's job processes and the platform process (legacy socket calls)
both import it. Each process exposes what it observed: the platform at ``/metrics``
(``callmissed/metrics.py``), the worker on ``AGENT_METRICS_PORT`` through livekit-agents'
Prometheus server, which aggregates the job processes in multiprocess mode.

Label values are bounded: stages are fixed, providers are our plugin classes, kinds are error
classes; no session id, organization or text ever becomes a label.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from prometheus_client import Counter, Histogram

# Voice latency lives between a tenth of a second and a few seconds; the tail matters most.
TURN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)


class TurnStage(StrEnum):
    # End of the caller's speech → the STT's final transcript.
    STT_FINAL = "stt_final"
    # Request to the LLM → its first token.
    LLM_FIRST_TOKEN = "llm_first_token"
    # Text to the TTS → its first audio.
    TTS_FIRST_AUDIO = "tts_first_audio"
    # End of the caller's speech → the agent's first audio: what the caller waits.
    END_TO_END = "end_to_end"


TURN_STAGE_SECONDS = Histogram(
    "callmissed_turn_stage_seconds",
    "Latency of each stage of a conversational turn.",
    ["stage"],
    buckets=TURN_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "callmissed_provider_errors_total",
    "Errors reported by a speech or language provider during a conversation.",
    ["component", "provider", "kind"],
)

# livekit-agents' per-reply metrics (ChatMessage.metrics) that measure each stage, in seconds.
_STAGE_KEYS = {
    TurnStage.STT_FINAL: "transcription_delay",
    TurnStage.LLM_FIRST_TOKEN: "llm_node_ttft",
    TurnStage.TTS_FIRST_AUDIO: "tts_node_ttfb",
    TurnStage.END_TO_END: "e2e_latency",
}


def observe_turn(reply_metrics: dict[str, Any]) -> None:
    """Record the stages a reply measured; the greeting has no caller speech, so no end-to-end."""
    for stage, key in _STAGE_KEYS.items():
        value = reply_metrics.get(key)
        if isinstance(value, int | float) and value >= 0:
            TURN_STAGE_SECONDS.labels(stage=stage.value).observe(float(value))


def observe_provider_error(error: Any) -> None:
    """``error`` is livekit's STTError / LLMError / TTSError (``type``, ``label``, ``error``)."""
    component = str(getattr(error, "type", "") or "unknown").removesuffix("_error")
    provider = str(getattr(error, "label", "") or "unknown").rsplit(".", 1)[-1]
    cause = getattr(error, "error", error)
    kind = type(cause).__name__ if cause is not None else "unknown"
    PROVIDER_ERRORS.labels(component=component, provider=provider, kind=kind).inc()
