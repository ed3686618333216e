"""Route a catalog model id to the OpenAI-compatible endpoint that serves it.

* ``kimi-k2.5`` → Clarifai's OpenAI-compatible API (PAT as Bearer), Clarifai's model URL as
  the model name, thinking disabled: Kimi reasons before answering by default, which delays the
  first spoken word by seconds.
* ``sarvam-105b`` → Sarvam chat completions (``{sarvam_base_url}/v1``), key sent both as
  ``api-subscription-key`` and Bearer, as Sarvam documents.
* ``vendor/model`` → OpenRouter, Bearer key, reasoning disabled with OpenRouter's unified
  ``reasoning`` parameter.

All routes stream with ``stream_options.include_usage`` (livekit's OpenAI plugin always asks),
so the final chunk's token counts reach livekit's LLM metrics and the session usage. The plugin
reads only ``delta.content`` (and strips ``<think>`` blocks from it), so a provider's
``reasoning_content`` / ``reasoning`` deltas never reach the TTS. Retries are livekit's (the
session's connection options), not the SDK's, so a failed request is retried in one place.

Sessions on one event loop that talk to the same endpoint with the same key share one OpenAI
client (and so its httpx connection pool) for as long as any of them is open: a client per
session built its own SSL context (a few ms of CPU each) and, against a real provider, paid a
TLS handshake per session instead of reusing a warm connection.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx2 as httpx
import openai as openai_sdk
from livekit.agents import llm
from livekit.plugins import openai

from agent_worker import catalog
from agent_worker.provider_settings import ProviderConfigError, ProviderSettings

SARVAM_CHAT_PATH = "/v1"
# Kimi (Moonshot's API shape): turn the reasoning phase off for voice.
KIMI_NO_THINKING = {"thinking": {"type": "disabled"}}
# OpenRouter's unified switch for reasoning models.
OPENROUTER_NO_REASONING = {"reasoning": {"enabled": False}}
# The plugin's own per-client settings, except the connection cap: one pool now serves every
# concurrent session on the loop, and a cap would queue one caller's reply behind others'.
_TIMEOUT = httpx.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0)
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=100, keepalive_expiry=120)


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
        return _llm(
            model=entry.provider_model,
            base_url=settings.clarifai_base_url,
            api_key=_require(settings.clarifai_pat, "CLARIFAI_PAT", model_id),
            extra_body=KIMI_NO_THINKING,
        )
    if entry.provider == "sarvam":
        key = _require(settings.sarvam_api_key, "SARVAM_API_KEY", model_id)
        return _llm(
            model=entry.id,
            base_url=settings.sarvam_base_url + SARVAM_CHAT_PATH,
            api_key=key,
            extra_headers={"api-subscription-key": key},
        )
    if entry.provider == "openrouter":
        return _llm(
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


class _Lease:
    """One session's hold on a shared client; the last session to let go closes it."""

    def __init__(self, pool: _ClientPool, key: tuple[str, str]) -> None:
        self._pool = pool
        self._key = key
        self._held = True
        self.client = pool.acquire(key)

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._pool.release(self._key)


class _ClientPool:
    """The shared clients of one event loop, by (base_url, api_key), with their users counted.
    httpx pools belong to the loop that opened them, hence one pool per loop."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], tuple[openai_sdk.AsyncOpenAI, int]] = {}

    def acquire(self, key: tuple[str, str]) -> openai_sdk.AsyncOpenAI:
        client, users = self._clients.get(key) or (_new_client(*key), 0)
        self._clients[key] = (client, users + 1)
        return client

    async def release(self, key: tuple[str, str]) -> None:
        client, users = self._clients[key]
        if users > 1:
            self._clients[key] = (client, users - 1)
            return
        del self._clients[key]
        await client.close()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ClientPool] = weakref.WeakKeyDictionary()


def _new_client(base_url: str, api_key: str) -> openai_sdk.AsyncOpenAI:
    return openai_sdk.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        http_client=httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=True, limits=_LIMITS),
    )


class _SharedClientLLM(openai.LLM):
    def __init__(self, *, lease: _Lease, **kwargs: Any) -> None:
        super().__init__(client=lease.client, **kwargs)
        self._lease = lease

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self._lease.release()


def _llm(*, base_url: str, api_key: str, **kwargs: Any) -> openai.LLM:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        # Built outside a loop, it cannot know which loop's pool it will run on: own a client.
        return openai.LLM(base_url=base_url, api_key=api_key, **kwargs)
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = _ClientPool()
    return _SharedClientLLM(lease=_Lease(pool, (base_url, api_key)), **kwargs)
