"""Choose the speech and language providers for one conversation.

``build_providers`` turns a session config and the provider settings into the three livekit
plugins the pipeline runs (STT, LLM, TTS) plus the names usage is billed under. With no keys the
embedded default is the offline set (local STT and TTS, a scripted LLM), labelled ``offline`` so
nobody mistakes it for the real thing. Nothing here opens a connection: the plugins connect on
first use, so building is cheap and safe to do before the caller joins.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.agents import llm, stt, tts

from agent_worker import catalog, contracts
from agent_worker.provider_settings import ProviderConfigError, ProviderSettings

OFFLINE_LABEL = "offline"
OFFLINE_PROVIDER = "offline"
OFFLINE_STT_MODEL = "offline-pocketsphinx"
OFFLINE_TTS_MODEL = "piper"
OFFLINE_LLM_MODEL = "scripted"

SARVAM_PROVIDER = "sarvam"
SARVAM_TTS_MODEL = "bulbul:v3"
SUPPORTED_TTS_PROVIDERS = frozenset({SARVAM_PROVIDER})


@dataclass(frozen=True)
class BilledAs:
    """The model and provider a component's usage is recorded under."""

    model: str
    provider: str


@dataclass(frozen=True)
class Providers:
    stt: stt.STT
    llm: llm.LLM
    tts: tts.TTS
    label: str
    stt_billed_as: BilledAs
    llm_billed_as: BilledAs
    tts_billed_as: BilledAs


def providers_label(config: contracts.SessionConfig, settings: ProviderSettings) -> str:
    """``offline``, or ``sarvam+<llm provider>`` — known without building anything."""
    if settings.offline:
        return OFFLINE_LABEL
    return f"{_speech_provider(config)}+{_llm_entry(config).provider}"


def build_providers(config: contracts.SessionConfig, settings: ProviderSettings, *, sample_rate: int) -> Providers:
    """Raises ``ProviderConfigError`` (or the LLM routing errors, both ``ValueError``) with a
    message fit for the session's error reason when the config cannot be served."""
    if settings.offline:
        return _offline(config, sample_rate=sample_rate)
    return _real(config, settings, sample_rate=sample_rate)


def _offline(config: contracts.SessionConfig, *, sample_rate: int) -> Providers:
    # Imported here: the offline models are heavy, and a worker on real providers never loads them.
    from agent_worker.providers.offline import OfflineSTT, OfflineTTS, ScriptedLLM

    billed = BilledAs(model=OFFLINE_STT_MODEL, provider=OFFLINE_PROVIDER)
    return Providers(
        stt=OfflineSTT(language=config.language, sample_rate=sample_rate),
        llm=ScriptedLLM(),
        tts=OfflineTTS(sample_rate=sample_rate, voice=config.voice),
        label=OFFLINE_LABEL,
        stt_billed_as=billed,
        llm_billed_as=BilledAs(model=OFFLINE_LLM_MODEL, provider=OFFLINE_PROVIDER),
        tts_billed_as=BilledAs(model=OFFLINE_TTS_MODEL, provider=OFFLINE_PROVIDER),
    )


def _real(config: contracts.SessionConfig, settings: ProviderSettings, *, sample_rate: int) -> Providers:
    from agent_worker.providers.llm import build_llm
    from agent_worker.providers.sarvam_stt import SarvamSTT
    from agent_worker.providers.sarvam_tts import SarvamTTS

    speech = _speech_provider(config)
    if not settings.sarvam_api_key:
        raise ProviderConfigError("Sarvam speech needs SARVAM_API_KEY to be set")
    entry = _llm_entry(config)
    language_model = build_llm(config.llm_model, settings)
    return Providers(
        stt=SarvamSTT(
            api_key=settings.sarvam_api_key,
            language=config.language,
            ws_url=settings.sarvam_ws_url,
            model=settings.sarvam_stt_model,
            sample_rate=sample_rate,
        ),
        llm=language_model,
        tts=SarvamTTS(
            api_key=settings.sarvam_api_key,
            voice=config.voice,
            language=config.language,
            ws_url=settings.sarvam_ws_url,
            model=SARVAM_TTS_MODEL,
            sample_rate=sample_rate,
        ),
        label=f"{speech}+{entry.provider}",
        stt_billed_as=BilledAs(model=settings.sarvam_stt_model, provider=SARVAM_PROVIDER),
        # Billed under the id the customer asked for, not the provider's internal model URL.
        llm_billed_as=BilledAs(model=config.llm_model, provider=entry.provider),
        tts_billed_as=BilledAs(model=SARVAM_TTS_MODEL, provider=SARVAM_PROVIDER),
    )


def _speech_provider(config: contracts.SessionConfig) -> str:
    if config.tts_provider not in SUPPORTED_TTS_PROVIDERS:
        supported = ", ".join(sorted(SUPPORTED_TTS_PROVIDERS))
        raise ProviderConfigError(f"TTS provider {config.tts_provider!r} is not supported (supported: {supported})")
    return config.tts_provider


def _llm_entry(config: contracts.SessionConfig) -> catalog.LLMModel:
    from agent_worker.providers.llm import UnknownLLMModelError

    entry = catalog.llm_model(config.llm_model)
    if entry is None:
        raise UnknownLLMModelError(f"unknown LLM model {config.llm_model!r}")
    return entry
