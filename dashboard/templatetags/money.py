"""Money, quantities and billing names as the dashboard shows them: the same text as the API."""

from __future__ import annotations

from decimal import Decimal

from django import template

from agent_worker.contracts import UsageComponent
from billing.pricing import display, display_quantity

register = template.Library()

COMPONENT_NAMES: dict[str, str] = {
    UsageComponent.STT_SECONDS: "Speech recognition (seconds)",
    UsageComponent.TTS_CHARACTERS: "Speech synthesis (characters)",
    UsageComponent.LLM_INPUT_TOKENS: "Language model input (tokens)",
    UsageComponent.LLM_OUTPUT_TOKENS: "Language model output (tokens)",
}


@register.filter
def usd(value: Decimal | None) -> str:
    return "" if value is None else display(value)


@register.filter
def quantity(value: Decimal) -> str:
    return display_quantity(value)


@register.filter
def component_name(component: str) -> str:
    """``stt_seconds`` → "Speech recognition (seconds)"; an unknown component keeps its id."""
    return COMPONENT_NAMES.get(component, component)


@register.filter
def humanize_code(code: str) -> str:
    """``insufficient_funds`` → "insufficient funds" (end reasons, ledger kinds)."""
    return code.replace("_", " ")
