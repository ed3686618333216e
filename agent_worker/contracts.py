"""The one definition of what crosses the boundary between the agent worker and Django.

The worker receives a ``DispatchMetadata`` (JSON in the LiveKit dispatch metadata) and reports
back with Celery ``send_task`` to the task names below, each with one pydantic payload. Django
imports this module; this module imports nothing from Django.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Keep your answers short and conversational, and speak in the user's language."
)
DEFAULT_VOICE = "shubh"
DEFAULT_LANGUAGE = "en-IN"
DEFAULT_LLM_MODEL = "kimi-k2.5"
DEFAULT_TTS_PROVIDER = "sarvam"
DEFAULT_MAX_DURATION_SECONDS = 300
MIN_MAX_DURATION_SECONDS = 30
MAX_MAX_DURATION_SECONDS = 3600
MAX_SYSTEM_PROMPT_CHARS = 8000
MAX_LLM_MODEL_CHARS = 200
TTS_PROVIDERS = (DEFAULT_TTS_PROVIDER,)
# A caller utterance longer than this is never a backchannel, and no phrase may be longer.
MAX_BACKCHANNEL_WORDS = 6
MAX_BACKCHANNEL_EXTRA_PHRASES = 50
MAX_BACKCHANNEL_PHRASE_CHARS = 40

# Customer tools (see ``ToolSpec``); Django checks these where a config enters.
MAX_TOOLS = 16
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOL_DESCRIPTION_CHARS = 1024
MAX_TOOL_URL_CHARS = 2048
MAX_TOOL_PARAMETERS_BYTES = 8192  # the JSON Schema, serialized
MAX_TOOL_PARAMETERS_DEPTH = 8  # nesting of objects and arrays in it
MIN_TOOL_TIMEOUT_MS = 500
MAX_TOOL_TIMEOUT_MS = 30000
DEFAULT_TOOL_TIMEOUT_MS = 5000
# The LLM may always call this one to hang up; no customer tool may take its name.
END_CALL_TOOL = "end_call"
RESERVED_TOOL_NAMES = (END_CALL_TOOL,)


class Transport(StrEnum):
    LIVEKIT = "livekit"
    WEBSOCKET = "websocket"


class EndReason(StrEnum):
    COMPLETED = "completed"
    USER_LEFT = "user_left"
    MAX_DURATION = "max_duration"
    DELETED = "deleted"
    IDLE = "idle"
    UNJOINED = "unjoined"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    PROVIDER_ERROR = "provider_error"
    LOST = "lost"
    ERROR = "error"
    AGENT_HANGUP = "agent_hangup"  # the agent ended the call (the LLM called end_call) after its goodbye
    KEY_REVOKED = "key_revoked"  # the API key that opened a legacy socket was revoked


# Reasons that mean the session failed rather than ended normally.
FAILURE_REASONS = frozenset({EndReason.UNJOINED, EndReason.PROVIDER_ERROR, EndReason.LOST, EndReason.ERROR})


class UsageComponent(StrEnum):
    STT_SECONDS = "stt_seconds"
    TTS_CHARACTERS = "tts_characters"
    LLM_INPUT_TOKENS = "llm_input_tokens"
    LLM_OUTPUT_TOKENS = "llm_output_tokens"


def _storable(value: Any) -> Any:
    """Strings as PostgreSQL stores them: no NUL (text refuses it) and no lone surrogate (UTF-8
    cannot encode one). Callers' words and customers' tool answers reach these payloads, and one
    such character made the database refuse a whole batch of other sessions' lines and usage."""
    if isinstance(value, str):
        value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {key: _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _storable_strings(cls, data: Any) -> Any:
        return _storable(data)


@dataclass(frozen=True)
class Limits:
    """What a client may ask for in a field, checked where a config enters Django.

    Django's input serializers are built from the fields that carry these (see
    ``callmissed.serializers.contract_fields``); pydantic does not enforce them, on purpose: the
    worker runs whatever config Django accepted, so a limit changed on one side of a deploy never
    makes the other side refuse a session."""

    min_length: int | None = None
    max_length: int | None = None
    ge: int | None = None
    le: int | None = None
    choices: tuple[str, ...] = ()
    # For a list of strings: the length limits apply to the list, these to each string.
    item_min_length: int | None = None
    item_max_length: int | None = None
    pattern: str | None = None


class BackchannelSettings(_Payload):
    """How a caller's short acknowledgement over the agent ("haan", "theek hai", "okay") is
    treated: with ``enabled`` it neither stops the agent nor becomes a user turn (the catalog's
    list for the session's language plus ``extra_phrases``); without it, any speech over the
    agent stops it at once."""

    enabled: bool = Field(
        default=True,
        description="Let a caller's short acknowledgement over the agent pass without stopping it.",
    )
    extra_phrases: Annotated[
        list[str],
        Limits(
            max_length=MAX_BACKCHANNEL_EXTRA_PHRASES, item_min_length=1, item_max_length=MAX_BACKCHANNEL_PHRASE_CHARS
        ),
    ] = Field(
        default_factory=list,
        description=(
            f"Phrases (at most {MAX_BACKCHANNEL_WORDS} words each) added to the catalog's list for the "
            "session's language."
        ),
    )


def _empty_parameters() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


class ToolSpec(_Payload):
    """A customer tool the LLM may call: the worker POSTs the arguments to ``url``, signed like
    the customer's webhooks, and gives the LLM the response body as the result."""

    name: Annotated[str, Limits(min_length=1, max_length=64, pattern=TOOL_NAME_PATTERN)] = Field(
        description="What the LLM calls it: letters, digits, '_' and '-', at most 64."
    )
    description: Annotated[str, Limits(min_length=1, max_length=MAX_TOOL_DESCRIPTION_CHARS)] = Field(
        description="When and why the LLM should call it."
    )
    parameters: dict[str, Any] = Field(
        default_factory=_empty_parameters,
        description=(
            "The arguments as a JSON Schema object (type: object), at most "
            f"{MAX_TOOL_PARAMETERS_BYTES} bytes and {MAX_TOOL_PARAMETERS_DEPTH} levels deep."
        ),
    )
    url: Annotated[str, Limits(min_length=1, max_length=MAX_TOOL_URL_CHARS)] = Field(
        description="The HTTPS URL the worker POSTs each call to."
    )
    timeout_ms: Annotated[int, Limits(ge=MIN_TOOL_TIMEOUT_MS, le=MAX_TOOL_TIMEOUT_MS)] = Field(
        default=DEFAULT_TOOL_TIMEOUT_MS, description="How long a call may take before the LLM is told it timed out."
    )


class SessionConfig(_Payload):
    """What the pipeline needs to run one conversation: the one definition of a session config.

    The REST body and the legacy socket's config message are these fields (plus ``metadata``,
    which stays with Django), validated on the Django side by a serializer built from them."""

    system_prompt: Annotated[str, Limits(min_length=1, max_length=MAX_SYSTEM_PROMPT_CHARS)] = DEFAULT_SYSTEM_PROMPT
    voice: Annotated[str, Limits(min_length=1)] = DEFAULT_VOICE
    language: Annotated[str, Limits(min_length=1)] = DEFAULT_LANGUAGE
    llm_model: Annotated[str, Limits(min_length=1, max_length=MAX_LLM_MODEL_CHARS)] = DEFAULT_LLM_MODEL
    tts_provider: Annotated[str, Limits(choices=TTS_PROVIDERS)] = DEFAULT_TTS_PROVIDER
    max_duration_seconds: Annotated[int, Limits(ge=MIN_MAX_DURATION_SECONDS, le=MAX_MAX_DURATION_SECONDS)] = (
        DEFAULT_MAX_DURATION_SECONDS
    )
    backchannels: BackchannelSettings = Field(default_factory=BackchannelSettings)
    tools: Annotated[list[ToolSpec], Limits(max_length=MAX_TOOLS)] = Field(default_factory=list)


class DispatchMetadata(_Payload):
    """JSON carried in the LiveKit agent dispatch for one session."""

    session_id: str
    config: SessionConfig = Field(default_factory=SessionConfig)
    # For the worker's log lines (agent_worker/logs.py) and to derive the organization's tool
    # signing secret (agent_worker/tools.py); never a secret itself: it travels, sealed, in the
    # caller's token.
    organization_id: str = ""


def new_event_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class WorkerEvent(_Payload):
    """Every event carries a unique id: Django applies each id at most once."""

    event_id: str = Field(default_factory=new_event_id)
    session_id: str
    occurred_at: datetime = Field(default_factory=_now)


class SessionStarted(WorkerEvent):
    providers: str = ""  # e.g. "offline" or "sarvam+clarifai"; shown in session data
    # The LiveKit room it runs in: lets Django delete the room of a session it does not know.
    room_name: str = ""


MAX_TOOL_EXCERPT_CHARS = 500  # a tool call's arguments and result, as the transcript keeps them


class ToolCallRecord(_Payload):
    """A tool call on the record: what the LLM asked, what came back, how long it took."""

    name: str
    call_id: str = ""
    arguments: str = ""  # the JSON text the LLM sent, cut to MAX_TOOL_EXCERPT_CHARS
    result: str = ""  # the start of what the LLM was given back
    is_error: bool = False
    latency_ms: float = Field(default=0.0, ge=0)


class TranscriptSegment(WorkerEvent):
    role: Literal["user", "agent", "tool"]
    text: str  # for a tool segment, the tool's name
    language: str = ""
    start_offset_ms: int = Field(ge=0)
    end_offset_ms: int = Field(ge=0)
    tool_call: ToolCallRecord | None = None  # set on role "tool" only


class UsageItem(_Payload):
    component: UsageComponent
    model: str
    provider: str
    quantity: float = Field(ge=0)


class UsageReported(WorkerEvent):
    items: list[UsageItem]


class TurnLatency(_Payload):
    end_of_speech_to_first_audio_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None


class SessionEnded(WorkerEvent):
    reason: EndReason
    duration_seconds: float = Field(ge=0)
    turn_latencies: list[TurnLatency] = Field(default_factory=list)
    error: str = ""


# The Celery message header every publisher stamps with the time it sent the task (seconds since
# the epoch): the Django worker measures queue lag from it.
PUBLISHED_AT_HEADER = "callmissed_published_at"


class EventBatch(_Payload):
    """Transcript segments and usage the sessions of one worker process reported within the
    reporter's window, sent as one task; Django applies each event id in it once, to the session
    the event names, as if it had come alone."""

    segments: list[TranscriptSegment] = Field(default_factory=list)
    usage: list[UsageReported] = Field(default_factory=list)


# Celery task names: the worker's send_task and Django's @shared_task(name=...) both use these.
TASK_EVENT_BATCH = "voice.event_batch"
TASK_SESSION_STARTED = "voice.session_started"
TASK_TRANSCRIPT_SEGMENT = "voice.transcript_segment"
TASK_USAGE_REPORTED = "voice.usage_reported"
TASK_SESSION_ENDED = "voice.session_ended"

TASK_PAYLOADS: dict[str, type[WorkerEvent]] = {
    TASK_SESSION_STARTED: SessionStarted,
    TASK_TRANSCRIPT_SEGMENT: TranscriptSegment,
    TASK_USAGE_REPORTED: UsageReported,
    TASK_SESSION_ENDED: SessionEnded,
}
