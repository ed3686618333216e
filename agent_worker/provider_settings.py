"""Which speech and language providers a conversation uses, read from the environment.

The agent worker never imports Django, so this is the one place both transports (the LiveKit
worker and the legacy WebSocket consumer inside Django) read provider keys and base URLs from.
With no provider keys the embedded default is the offline set, so the product runs anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class SpeechMode(StrEnum):
    AUTO = "auto"  # real providers when their keys are set, offline otherwise
    OFFLINE = "offline"
    REAL = "real"


class ProviderConfigError(ValueError):
    """The environment asks for something the provider settings cannot satisfy."""


@dataclass(frozen=True)
class ProviderSettings:
    mode: SpeechMode = SpeechMode.AUTO
    sarvam_api_key: str = ""
    sarvam_base_url: str = "https://api.sarvam.ai"
    sarvam_ws_url: str = "wss://api.sarvam.ai"
    clarifai_pat: str = ""
    clarifai_base_url: str = "https://api.clarifai.com/v2/ext/openai/v1"
    openrouter_api_key: str = ""
    openrouter_base_url: str = "https://openrouter.ai/api/v1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProviderSettings:
        env = os.environ if environ is None else environ
        raw_mode = env.get("SPEECH_PROVIDERS", SpeechMode.AUTO.value).strip().lower() or SpeechMode.AUTO.value
        try:
            mode = SpeechMode(raw_mode)
        except ValueError:
            choices = ", ".join(m.value for m in SpeechMode)
            raise ProviderConfigError(f"SPEECH_PROVIDERS must be one of {choices}, got {raw_mode!r}") from None
        base = env.get("SARVAM_BASE_URL", cls.sarvam_base_url).rstrip("/")
        settings = cls(
            mode=mode,
            sarvam_api_key=env.get("SARVAM_API_KEY", ""),
            sarvam_base_url=base,
            sarvam_ws_url=env.get("SARVAM_WS_URL", _ws_url_for(base)).rstrip("/"),
            clarifai_pat=env.get("CLARIFAI_PAT", ""),
            clarifai_base_url=env.get("CLARIFAI_BASE_URL", cls.clarifai_base_url).rstrip("/"),
            openrouter_api_key=env.get("OPENROUTER_API_KEY", ""),
            openrouter_base_url=env.get("OPENROUTER_BASE_URL", cls.openrouter_base_url).rstrip("/"),
        )
        if mode is SpeechMode.REAL and not settings.sarvam_api_key:
            raise ProviderConfigError("SPEECH_PROVIDERS=real needs SARVAM_API_KEY")
        return settings

    @property
    def offline(self) -> bool:
        """True when conversations run on the bundled offline speech models and scripted LLM."""
        if self.mode is SpeechMode.OFFLINE:
            return True
        if self.mode is SpeechMode.REAL:
            return False
        return not self.sarvam_api_key

    def redacted(self) -> dict[str, str]:
        """What is safe to log: URLs and whether each key is set, never the keys."""
        return {
            "mode": self.mode.value,
            "offline": str(self.offline).lower(),
            "sarvam_base_url": self.sarvam_base_url,
            "sarvam_ws_url": self.sarvam_ws_url,
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
