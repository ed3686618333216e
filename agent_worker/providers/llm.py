"""Route a catalog model id to the OpenAI-compatible endpoint that serves it.

* ``kimi-k2.5`` → Clarifai's OpenAI-compatible API (PAT as Bearer), Clarifai's model URL as
  the model name, thinking disabled: Kimi reasons before answering by default, which delays the
  first spoken word by seconds.
* ``sarvam-105b`` → Sarvam chat completions (``{sarvam_base_url}/v1``), key sent both as
  ``api-subscription-key`` and Bearer, as Sarvam documents.
* ``vendor/model`` → OpenRouter, Bearer key, reasoning disabled with OpenRouter's unified
  ``reasoning`` parameter.

Every route is an ``OpenAICompatibleLLM`` (``openai_compat``): it streams with
``stream_options.include_usage``, so the final chunk's token counts reach livekit's LLM metrics
and the session usage, and reads only ``delta.content`` (with ``<think>`` blocks stripped), so a
provider's ``reasoning_content`` / ``reasoning`` deltas never reach the TTS. Retries are
livekit's (the session's connection options), so a failed request is retried in one place.
"""

from __future__ import annotations

from livekit.agents import llm

from agent_worker import catalog
from agent_worker.provider_settings import ProviderConfigError, ProviderSettings
from agent_worker.providers.openai_compat import OpenAICompatibleLLM

SARVAM_CHAT_PATH = "/v1"
# Kimi (Moonshot's API shape): turn the reasoning phase off for voice.
KIMI_NO_THINKING = {"thinking": {"type": "disabled"}}
# OpenRouter's unified switch for reasoning models.
OPENROUTER_NO_REASONING = {"reasoning": {"enabled": False}}


class UnknownLLMModelError(ValueError):
    """The model id is neither a catalog model nor an OpenRouter ``vendor/model`` id."""


class LLMModelUnavailableError(ValueError):
    """The model is in the catalog but not serving (e.g. under maintenance)."""


def build_llm(model_id: str, settings: ProviderSettings) -> llm.LLM:
    entry = catalog.llm_model(model_id)
    if entry is None:
        raise UnknownLLMModelError(f"unknown LLM model {model_id!r}")
    if entry.status != "available":
        raise LLMModelUnavailableError(entry.message or f"{model_id} is not available")
    if entry.provider == "clarifai":
        return OpenAICompatibleLLM(
            model=entry.provider_model,
            base_url=settings.clarifai_base_url,
            api_key=_require(settings.clarifai_pat, "CLARIFAI_PAT", model_id),
            extra_body=KIMI_NO_THINKING,
        )
    if entry.provider == "sarvam":
        key = _require(settings.sarvam_api_key, "SARVAM_API_KEY", model_id)
        return OpenAICompatibleLLM(
            model=entry.id,
            base_url=settings.sarvam_base_url + SARVAM_CHAT_PATH,
            api_key=key,
            extra_headers={"api-subscription-key": key},
        )
    if entry.provider == "openrouter":
        return OpenAICompatibleLLM(
            model=entry.provider_model or entry.id,
            base_url=settings.openrouter_base_url,
            api_key=_require(settings.openrouter_api_key, "OPENROUTER_API_KEY", model_id),
            extra_body=OPENROUTER_NO_REASONING,
        )
    raise UnknownLLMModelError(f"no route for provider {entry.provider!r} of model {model_id!r}")


def _require(value: str, env_name: str, model_id: str) -> str:
    if not value:
        raise ProviderConfigError(f"{model_id} needs {env_name} to be set")
    return value
