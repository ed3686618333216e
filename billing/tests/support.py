"""Usage events as the agent worker sends them, for billing tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from agent_worker import contracts
from billing import services
from voice import lifecycle
from voice.models import VoiceSession

C = contracts.UsageComponent


def usage_event(
    session: VoiceSession,
    *items: tuple[contracts.UsageComponent, str, float],
    at: datetime | None = None,
    event_id: str | None = None,
) -> contracts.UsageReported:
    """``items`` are (component, model, quantity); the provider is inferred as the worker names it."""
    fields: dict[str, Any] = {
        "session_id": str(session.pk),
        "occurred_at": at or timezone.now(),
        "items": [
            contracts.UsageItem(component=component, model=model, provider=_provider(model), quantity=quantity)
            for component, model, quantity in items
        ],
    }
    if event_id:
        fields["event_id"] = event_id
    return contracts.UsageReported(**fields)


def apply_usage(event: contracts.UsageReported) -> services.UsageApplied:
    """What the voice app does with a usage event: bill it to its session's organization."""
    return lifecycle.usage_add(usage=event)


def _provider(model: str) -> str:
    if "/" in model:
        return "openrouter"
    return {"kimi-k2.5": "clarifai"}.get(model, "sarvam")


# One turn of a Kimi session on Sarvam speech, and its exact cost in USD.
KIMI_TURN = (
    (C.STT_SECONDS, "saaras:v3", 61.5),
    (C.TTS_CHARACTERS, "bulbul:v3", 1234),
    (C.LLM_INPUT_TOKENS, "kimi-k2.5", 1500),
    (C.LLM_OUTPUT_TOKENS, "kimi-k2.5", 320),
)
