"""Validation of a session config: one serializer used by the REST API and the legacy
WebSocket, so both answer bad input with the same fields and messages."""

from __future__ import annotations

import json
import math
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agent_worker import catalog, contracts
from callmissed import jsonsafe

MAX_METADATA_BYTES = 4096
MAX_METADATA_KEYS = 32
# The largest integer every JSON client holds exactly (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1


@extend_schema_field(
    {
        "type": "object",
        "maxProperties": MAX_METADATA_KEYS,
        "description": (
            f"Up to {MAX_METADATA_KEYS} keys of at most 64 characters, at most {MAX_METADATA_BYTES} bytes as JSON; "
            f"values are strings, booleans, null, or numbers between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER}."
        ),
        "additionalProperties": {
            "nullable": True,
            "anyOf": [
                {"type": "string"},
                {"type": "boolean"},
                {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
            ],
        },
    }
)
class MetadataField(serializers.DictField):
    """A small flat JSON object, stored in jsonb and returned to every kind of client."""


def _accepted(values: list[str], limit: int = 50) -> str:
    shown = ", ".join(values[:limit])
    return shown + (", …" if len(values) > limit else "")


class SessionConfigSerializer(serializers.Serializer):
    system_prompt = serializers.CharField(
        required=False,
        default=contracts.DEFAULT_SYSTEM_PROMPT,
        max_length=contracts.MAX_SYSTEM_PROMPT_CHARS,
        trim_whitespace=True,
        allow_blank=False,
    )
    voice = serializers.CharField(required=False, default=contracts.DEFAULT_VOICE)
    language = serializers.CharField(required=False, default=contracts.DEFAULT_LANGUAGE)
    llm_model = serializers.CharField(required=False, default=contracts.DEFAULT_LLM_MODEL, max_length=200)
    tts_provider = serializers.CharField(required=False, default=contracts.DEFAULT_TTS_PROVIDER)
    max_duration_seconds = serializers.IntegerField(
        required=False,
        default=contracts.DEFAULT_MAX_DURATION_SECONDS,
        min_value=contracts.MIN_MAX_DURATION_SECONDS,
        max_value=contracts.MAX_MAX_DURATION_SECONDS,
    )
    metadata = MetadataField(required=False, default=dict, allow_empty=True)

    def to_internal_value(self, data: Any) -> Any:
        """Field rules plus what DRF lets slide: unknown fields, "300" for an integer, 5 for a string.
        Every problem is reported at once, keyed by field."""
        errors: dict[str, list[str]] = {}
        if isinstance(data, dict):
            known = ", ".join(self.fields)
            for name in sorted(set(data) - set(self.fields)):
                errors[name] = [f"Unknown field. Accepted fields: {known}."]
            value = data.get("max_duration_seconds")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                errors["max_duration_seconds"] = ["Must be an integer."]
            for name in ("system_prompt", "voice", "language", "llm_model", "tts_provider"):
                if name in data and not isinstance(data[name], str):
                    errors[name] = ["Must be a string."]
        try:
            validated = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            for name, messages in detail.items():
                errors.setdefault(str(name), [str(m) for m in messages])  # type: ignore[union-attr]
        if errors:
            raise serializers.ValidationError(errors)
        return validated

    def validate_voice(self, value: str) -> str:
        ids = [v.id for v in catalog.voices()]
        if value not in ids:
            raise serializers.ValidationError(f"Unknown voice {value!r}. Accepted values: {_accepted(ids)}.")
        return value

    def validate_language(self, value: str) -> str:
        by_code = {lang.code: lang for lang in catalog.languages()}
        tts_codes = [lang.code for lang in catalog.languages() if lang.tts]
        lang = by_code.get(value)
        if lang is None:
            raise serializers.ValidationError(f"Unknown language {value!r}. Accepted values: {_accepted(tts_codes)}.")
        if not lang.tts:
            raise serializers.ValidationError(
                f"{lang.name} ({value}) has speech recognition but no voice yet. "
                f"Accepted values: {_accepted(tts_codes)}."
            )
        return value

    def validate_llm_model(self, value: str) -> str:
        model = catalog.llm_model(value)
        named = [m.id for m in catalog.llm_models() if m.status == "available"]
        if model is None:
            raise serializers.ValidationError(
                f"Unknown model {value!r}. Accepted values: {', '.join(named)}, "
                "or any OpenRouter model id such as 'moonshotai/kimi-k2.5'."
            )
        if model.status != "available":
            raise serializers.ValidationError(
                model.message or f"{value} is under maintenance. Accepted values: {', '.join(named)}."
            )
        return value

    def validate_tts_provider(self, value: str) -> str:
        if value != "sarvam":
            raise serializers.ValidationError(f"Unknown TTS provider {value!r}. Accepted values: sarvam.")
        return value

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_METADATA_KEYS:
            raise serializers.ValidationError(f"At most {MAX_METADATA_KEYS} keys.")
        for key, item in value.items():
            if not isinstance(item, str | int | float | bool) and item is not None:
                raise serializers.ValidationError(f"Value of {key!r} must be a string, number, boolean or null.")
            if len(key) > 64:
                raise serializers.ValidationError(f"Key {key[:64]!r}… is longer than 64 characters.")
            _check_metadata_scalar(key, item)
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"Metadata must be at most {MAX_METADATA_BYTES} bytes as JSON.")
        return value


def _check_metadata_scalar(key: str, item: Any) -> None:
    """What the JSON parsers let through but a client or PostgreSQL's jsonb cannot hold exactly."""
    if jsonsafe.unstorable(key):
        raise serializers.ValidationError("Keys must not contain NUL characters or lone surrogates.")
    if isinstance(item, bool) or item is None:
        return
    # Beyond 2**53 a JavaScript client silently rounds the number: such values belong in a string.
    if isinstance(item, int | float) and not (math.isfinite(item) and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER):
        raise serializers.ValidationError(
            f"Value of {key!r} must be a number between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER}; "
            "send larger numbers as strings."
        )
    if isinstance(item, str) and jsonsafe.unstorable(item):
        raise serializers.ValidationError(f"Value of {key!r} must not contain NUL characters or lone surrogates.")
