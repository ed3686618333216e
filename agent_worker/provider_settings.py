"""Which speech and language providers a conversation uses, read from the environment.

The agent worker never imports Django, so this is the one definition both transports (the LiveKit
worker and the legacy WebSocket consumer inside Django) take provider keys and base URLs from.
With no provider keys the embedded default is the offline set, so the product runs anywhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_worker import catalog


class SpeechMode(StrEnum):
    AUTO = "auto"  # real providers when their keys are set, offline otherwise
    OFFLINE = "offline"
    REAL = "real"


class ProviderConfigError(ValueError):
    """The environment asks for something the provider settings cannot satisfy."""


class ProviderSettings(BaseSettings):
    """Read from the environment where it is built (once per process: see ``agent_worker.settings``);
    tests and benchmarks pass their values instead."""

    # Each field is the variable of its name; keys stay out of reprs (logs, Django's error pages).
    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="forbid")

    speech_providers: SpeechMode = SpeechMode.AUTO
    sarvam_api_key: str = Field("", repr=False)
    sarvam_base_url: str = "https://api.sarvam.ai"
    # Empty: SARVAM_BASE_URL with ws(s).
    sarvam_ws_url: str = ""
    # saaras:v3 as the product promises; another model the catalog lists as served on the same
    # socket is an operator's choice. Usage is billed under the model used, so it needs a price row.
    sarvam_stt_model: str = "saaras:v3"
    clarifai_pat: str = Field("", repr=False)
    clarifai_base_url: str = "https://api.clarifai.com/v2/ext/openai/v1"
    openrouter_api_key: str = Field("", repr=False)
    openrouter_base_url: str = "https://openrouter.ai/api/v1"

    @field_validator("speech_providers", mode="before")
    @classmethod
    def _mode_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("sarvam_stt_model")
    @classmethod
    def _served_stt_model(cls, value: str) -> str:
        served = catalog.sarvam_stt_models()
        if value not in served:
            raise ProviderConfigError(f"SARVAM_STT_MODEL must be one of {', '.join(served)}, got {value!r}")
        return value

    @field_validator("sarvam_base_url", "sarvam_ws_url", "clarifai_base_url", "openrouter_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _ws_url_and_keys(self) -> Self:
        if not self.sarvam_ws_url:
            # Frozen, so set through the base class once, while the object is being built.
            object.__setattr__(self, "sarvam_ws_url", _ws_url_for(self.sarvam_base_url))
        if self.speech_providers is SpeechMode.REAL and not self.sarvam_api_key:
            raise ProviderConfigError("SPEECH_PROVIDERS=real needs SARVAM_API_KEY")
        return self

    @property
    def offline(self) -> bool:
        """True when conversations run on the bundled offline speech models and scripted LLM."""
        if self.speech_providers is SpeechMode.OFFLINE:
            return True
        if self.speech_providers is SpeechMode.REAL:
            return False
        return not self.sarvam_api_key

    def redacted(self) -> dict[str, str]:
        """What is safe to log: URLs and whether each key is set, never the keys."""
        return {
            "speech_providers": self.speech_providers.value,
            "offline": str(self.offline).lower(),
            "sarvam_base_url": self.sarvam_base_url,
            "sarvam_ws_url": self.sarvam_ws_url,
            "sarvam_stt_model": self.sarvam_stt_model,
            "sarvam_api_key": "set" if self.sarvam_api_key else "unset",
            "clarifai_base_url": self.clarifai_base_url,
            "clarifai_pat": "set" if self.clarifai_pat else "unset",
            "openrouter_base_url": self.openrouter_base_url,
            "openrouter_api_key": "set" if self.openrouter_api_key else "unset",
        }


def _ws_url_for(http_url: str) -> str:
    if http_url.startswith("https://"):
        return "wss://" + http_url.removeprefix("https://")
    if http_url.startswith("http://"):
        return "ws://" + http_url.removeprefix("http://")
    return http_url
