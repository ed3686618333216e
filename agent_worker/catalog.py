"""The product catalog (voices, languages, LLM models, list prices), read once from the JSON
copied into the project. Pure Python so the worker and Django share one copy."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

_CATALOG_PATH = Path(__file__).with_name("catalog.json")

# "vendor/model" (optionally ":variant"), as OpenRouter names its models.
OPENROUTER_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:-]*$")


@dataclass(frozen=True)
class Voice:
    id: str
    gender: str | None


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    stt: bool
    tts: bool


@dataclass(frozen=True)
class LLMModel:
    id: str
    status: str  # "available" or "maintenance"
    provider: str
    provider_model: str = ""
    message: str = ""
    # The provider refuses a request that turns this model's reasoning off.
    reasoning_mandatory: bool = False


@cache
def _raw() -> dict[str, Any]:
    return json.loads(_CATALOG_PATH.read_text())


@cache
def voices() -> tuple[Voice, ...]:
    return tuple(Voice(id=v["id"], gender=v.get("gender")) for v in _raw()["voices"])


@cache
def languages() -> tuple[Language, ...]:
    return tuple(
        Language(code=x["code"], name=x["name"], stt=bool(x["stt"]), tts=bool(x["tts"])) for x in _raw()["languages"]
    )


@cache
def llm_models() -> tuple[LLMModel, ...]:
    """The named models; any OpenRouter ``vendor/model`` id is accepted besides these."""
    out = []
    for m in _raw()["llm_models"]:
        if m["id"].startswith("<"):
            continue  # the catalog's placeholder for "any OpenRouter model"
        out.append(
            LLMModel(
                id=m["id"],
                status=m["status"],
                provider=m.get("provider", ""),
                provider_model=m.get("provider_model", ""),
                message=m.get("message", ""),
            )
        )
    return tuple(out)


def llm_model(model_id: str) -> LLMModel | None:
    """The catalog entry for a model id, or an OpenRouter entry for a ``vendor/model`` id."""
    for m in llm_models():
        if m.id == model_id:
            return m
    if OPENROUTER_MODEL_RE.match(model_id):
        return LLMModel(
            id=model_id,
            status="available",
            provider="openrouter",
            provider_model=model_id,
            reasoning_mandatory=model_id in _openrouter_reasoning_mandatory(),
        )
    return None


@cache
def backchannel_phrases(language: str) -> tuple[str, ...]:
    """The acknowledgements callers of ``language`` make while the agent speaks, English's
    included (callers code-mix); empty for a language the catalog has no list for."""
    lists = _raw()["backchannels"]
    return tuple(dict.fromkeys([*lists.get(language, ()), *lists["en-IN"]]))


@cache
def backchannel_languages() -> tuple[str, ...]:
    return tuple(code for code in _raw()["backchannels"] if not code.startswith("_"))


@cache
def _openrouter_reasoning_mandatory() -> frozenset[str]:
    """OpenRouter models whose endpoints answer 400 to ``reasoning: {enabled: false}``."""
    for m in _raw()["llm_models"]:
        if m.get("provider") == "openrouter" and m["id"].startswith("<"):
            return frozenset(m.get("reasoning_mandatory", ()))
    return frozenset()


@cache
def sarvam_stt_models() -> tuple[str, ...]:
    """The Sarvam STT models our client can stream to (``/speech-to-text/ws``), default first;
    the catalog also lists models Sarvam serves elsewhere, marked ``served: false``."""
    models = sorted(_raw()["stt"]["models"], key=lambda m: not m.get("default", False))
    return tuple(m["id"] for m in models if m["served"])
