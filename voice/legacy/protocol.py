"""The legacy socket's protocol as docs/legacy-websocket.md writes it down: the constants and close
codes it documents, and the reading of the config message."""

from __future__ import annotations

import json
import math
from enum import IntEnum, StrEnum
from typing import Any

from agent_worker import contracts
from callmissed import jsonsafe
from callmissed.errors import ErrorCode, ValidationFailed
from voice.config import SessionConfigSerializer

SUPPORTED_SAMPLE_RATES = (8000, 16000, 24000)
DEFAULT_SAMPLE_RATE = 16000
# Sarvam's streaming STT takes 8 or 16 kHz: a 24 kHz socket runs its providers at 16 kHz and the
# session resamples both ways.
PIPELINE_RATE = {8000: 8000, 16000: 16000, 24000: 16000}
CONFIG_FIELDS_WS_ONLY = ("type", "sample_rate")
# A config is a few hundred bytes and the control messages fewer: a longer text message is
# refused before it is parsed.
MAX_TEXT_MESSAGE_BYTES = 64 * 1024
# What Daphne is started with (--websocket-max-message-size): it reads a whole message before
# the consumer sees it, so a larger one is refused there, with 1009.
MAX_MESSAGE_BYTES = 1024 * 1024


class CloseCode(IntEnum):
    NORMAL = 1000  # the session ended (see session.ended's reason)
    # Sent by Daphne's WebSocket layer itself, with no error event: a frame that breaks the
    # protocol, a text message that is not UTF-8, a message over MAX_MESSAGE_BYTES.
    WS_PROTOCOL_VIOLATION = 1002
    WS_INVALID_PAYLOAD = 1007
    WS_MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    KEY_MISSING = 4001
    KEY_INVALID = 4002
    KEY_REVOKED = 4003  # revoked or expired
    PROTOCOL_ERROR = 4400
    PAYMENT_REQUIRED = 4402  # refused at admission, or ended for insufficient funds
    CONFIG_TIMEOUT = 4408
    AUDIO_TOO_FAST = 4409
    FRAME_TOO_LARGE = 4413
    INVALID_AUDIO = 4415
    INVALID_CONFIG = 4422
    CONCURRENCY_LIMIT = 4429
    CAPACITY_EXHAUSTED = 4503
    # The same code: the server cannot run the call safely right now (its control channel is down).
    SERVICE_UNAVAILABLE = 4503


class WsErrorCode(StrEnum):
    """``error`` event codes of the socket's own; the rest are the REST API's ``ErrorCode``s."""

    PROTOCOL_ERROR = "protocol_error"
    CONFIG_TIMEOUT = "config_timeout"
    AUDIO_TOO_FAST = "audio_too_fast"
    AUDIO_UNDERRUN = "audio_underrun"
    AUDIO_DROPPED = "audio_dropped"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_AUDIO = "invalid_audio"
    PROVIDER_ERROR = "provider_error"


AUTH_CLOSE = {
    ErrorCode.UNAUTHENTICATED: CloseCode.KEY_MISSING,
    ErrorCode.INVALID_API_KEY: CloseCode.KEY_INVALID,
    ErrorCode.REVOKED_API_KEY: CloseCode.KEY_REVOKED,
    ErrorCode.EXPIRED_API_KEY: CloseCode.KEY_REVOKED,
}
ADMISSION_CLOSE = {
    **AUTH_CLOSE,  # the key revoked or expired between the connect and the config
    ErrorCode.PAYMENT_REQUIRED: CloseCode.PAYMENT_REQUIRED,
    ErrorCode.CONCURRENCY_LIMIT: CloseCode.CONCURRENCY_LIMIT,
    ErrorCode.RATE_LIMITED: CloseCode.CONCURRENCY_LIMIT,
    ErrorCode.CAPACITY_EXHAUSTED: CloseCode.CAPACITY_EXHAUSTED,
    ErrorCode.VALIDATION_ERROR: CloseCode.INVALID_CONFIG,
}
END_CLOSE = {
    contracts.EndReason.INSUFFICIENT_FUNDS: CloseCode.PAYMENT_REQUIRED,
    contracts.EndReason.PROVIDER_ERROR: CloseCode.INTERNAL_ERROR,
    contracts.EndReason.ERROR: CloseCode.INTERNAL_ERROR,
    contracts.EndReason.KEY_REVOKED: CloseCode.KEY_REVOKED,
}
# The error event owed before a close other than 1000 when nothing has said why yet.
END_ERROR = {
    contracts.EndReason.INSUFFICIENT_FUNDS: str(ErrorCode.PAYMENT_REQUIRED),
    contracts.EndReason.PROVIDER_ERROR: str(WsErrorCode.PROVIDER_ERROR),
}


def config_invalid(fields: dict[str, list[str]]) -> ValidationFailed:
    """The validation error of a config message, its message naming the first field at fault."""
    name, messages = next(iter(fields.items()))
    return ValidationFailed(f"{name}: {messages[0]}", fields=fields)


def parse_config(message: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The REST body fields validated by the REST serializer, plus the socket's ``sample_rate``;
    raises ``ValidationFailed`` naming every field at fault."""
    errors: dict[str, list[str]] = {}
    rate = message.get("sample_rate", DEFAULT_SAMPLE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SUPPORTED_SAMPLE_RATES:
        accepted = ", ".join(map(str, SUPPORTED_SAMPLE_RATES))
        errors["sample_rate"] = [f"Unsupported sample rate {rate!r}. Accepted values: {accepted}."]
    body = {k: v for k, v in message.items() if k not in CONFIG_FIELDS_WS_ONLY}
    serializer = SessionConfigSerializer(data=body)
    if not serializer.is_valid():
        for name, messages in serializer.errors.items():
            errors[str(name)] = [str(m) for m in messages]
    if errors:
        raise config_invalid(dict(sorted(errors.items(), key=lambda item: item[0] == "sample_rate")))
    return dict(serializer.validated_data), rate


class _BadNumber:
    """A number the strict reader refuses, kept in place so the field holding it can be named."""

    def __init__(self, text: str) -> None:
        self.text = text

    @staticmethod
    def refuse(value: Any) -> Any:
        if isinstance(value, _BadNumber):
            raise jsonsafe.UnsafeJson(f"The number {value.text[:32]} is out of range.")
        raise TypeError(type(value).__name__)


def _finite_or_bad(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text)


def unsafe_config_fields(text: str) -> dict[str, list[str]]:
    """The fields of a config message that ``jsonsafe`` refused, each with the reason.

    A config object whose ``metadata`` holds a NUL or whose ``sample_rate`` is ``1e400`` is a
    field error for the client to fix (4422, as the REST API's 400 names the field), not an
    unreadable message (4400). Empty when the text is not otherwise a config object, or when what
    is wrong cannot be pinned on one field name that is itself fit to send back."""
    try:
        message = json.loads(text, parse_float=_finite_or_bad, parse_constant=_BadNumber)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(message, dict) or message.get("type") != "config":
        return {}
    fields: dict[str, list[str]] = {}
    for name, value in message.items():
        try:
            jsonsafe.loads(json.dumps(name))
        except ValueError:
            return {}  # a name with a NUL or a lone surrogate cannot be sent back as a field
        try:
            # Re-encoded (NUL and surrogates escaped, bad numbers refused on the way) and read
            # back strictly, one level down (in a list) as it is inside the message.
            jsonsafe.loads(json.dumps([value], default=_BadNumber.refuse))
        except jsonsafe.UnsafeJson as error:
            fields[name] = [str(error)]
        except (ValueError, RecursionError):
            fields[name] = [f"Nested more than {jsonsafe.MAX_DEPTH} levels deep."]
    return fields


TEXT_TOO_LONG = f"Text messages may be at most {MAX_TEXT_MESSAGE_BYTES // 1024} KiB; audio goes in binary messages."
NOT_AN_OBJECT = "Text messages must be JSON objects; audio goes in binary messages."


def text_too_long(text: str) -> bool:
    return len(text) > MAX_TEXT_MESSAGE_BYTES or len(text.encode("utf-8")) > MAX_TEXT_MESSAGE_BYTES
