"""Route a catalog model id to the OpenAI-compatible endpoint that serves it.

Every model here reasons before answering unless told not to, and for voice that delay is the
first spoken word's; each route sends its host's own switch (sources in docs/providers.md):

* ``kimi-k2.5`` → Clarifai's OpenAI-compatible API (PAT as Bearer), Clarifai's model URL as
  the model name. Clarifai serves open-weight models by handing the request's fields to the
  ``openai`` SDK in front of the model's own server, where ``extra_body`` is the one field that
  reaches the server; Kimi K2.5's chat template there takes ``chat_template_kwargs.thinking``.
  Moonshot's own ``thinking: {type: disabled}`` is for api.moonshot.ai, not for this host.
* ``sarvam-105b`` → Sarvam chat completions (``{sarvam_base_url}/v1``) as
  ``sarvam-105b-conversations``, the variant Sarvam tunes for dialogue, with
  ``reasoning_effort: null``: the effort defaults to medium, and null turns reasoning off. The
  key goes both as ``api-subscription-key`` and Bearer, as Sarvam documents.
* ``vendor/model`` → OpenRouter, Bearer key, ``reasoning: {enabled: false}`` — except for
  models the catalog lists as reasoning-mandatory, which OpenRouter refuses with a 400 when
  asked; a 400 for a model not listed yet is retried without the switch (``openai_compat``).

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
# Kimi K2.5 behind Clarifai: the chat-template switch, in the one field Clarifai forwards.
KIMI_ON_CLARIFAI_NO_THINKING = {"extra_body": {"chat_template_kwargs": {"thinking": False}}}
# Sarvam's V1 chat: null turns reasoning off (low, medium — the default — and high turn it on).
SARVAM_NO_REASONING = {"reasoning_effort": None}
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
            reasoning_off=KIMI_ON_CLARIFAI_NO_THINKING,
        )
    if entry.provider == "sarvam":
        key = _require(settings.sarvam_api_key, "SARVAM_API_KEY", model_id)
        return OpenAICompatibleLLM(
            model=entry.provider_model or entry.id,
            base_url=settings.sarvam_base_url + SARVAM_CHAT_PATH,
            api_key=key,
            extra_headers={"api-subscription-key": key},
            reasoning_off=SARVAM_NO_REASONING,
        )
    if entry.provider == "openrouter":
        return OpenAICompatibleLLM(
            model=entry.provider_model or entry.id,
            base_url=settings.openrouter_base_url,
            api_key=_require(settings.openrouter_api_key, "OPENROUTER_API_KEY", model_id),
            reasoning_off=None if entry.reasoning_mandatory else OPENROUTER_NO_REASONING,
        )
    raise UnknownLLMModelError(f"no route for provider {entry.provider!r} of model {model_id!r}")


def _require(value: str, env_name: str, model_id: str) -> str:
    if not value:
        raise ProviderConfigError(f"{model_id} needs {env_name} to be set")
    return value
