"""Validation of a session config: one serializer, built from the pydantic contract and used by
the REST API and the legacy WebSocket, so both answer bad input with the same fields and messages."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agent_worker import catalog, contracts
from agent_worker.backchannels import normalize
from callmissed import jsonsafe
from callmissed.serializers import ContractSerializer, StrictSerializer
from outbound import ssrf

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


# The fields of ``contracts.SessionConfig`` with their limits, plus ``metadata``. What the catalog
# offers (voices, languages, models in service) is checked here, where a config enters, not in the
# contract the worker reads. No docstring: the schema describes the body with the strict base's.
class SessionConfigSerializer(StrictSerializer, ContractSerializer):
    contract = contracts.SessionConfig
    metadata = MetadataField(required=False, default=dict, allow_empty=True)

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

    def validate_backchannels(self, value: dict[str, Any]) -> dict[str, Any]:
        for phrase in value.get("extra_phrases", ()):
            # Words as the worker's matcher counts them (punctuation separates): a phrase it would
            # drop as empty or too long is refused here instead of being accepted and never matching.
            words = len(normalize(phrase))
            if words > contracts.MAX_BACKCHANNEL_WORDS:
                raise serializers.ValidationError(
                    {"extra_phrases": [f"Phrase {phrase!r} has more than {contracts.MAX_BACKCHANNEL_WORDS} words."]}
                )
            if words == 0:
                raise serializers.ValidationError({"extra_phrases": [f"Phrase {phrase!r} has no words."]})
            if jsonsafe.unstorable(phrase):
                raise serializers.ValidationError(
                    {"extra_phrases": ["Phrases must not contain NUL characters or lone surrogates."]}
                )
        return value

    def validate_tools(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        errors: dict[str, Any] = {}
        seen: set[str] = set()
        for index, tool in enumerate(value):
            problems = _tool_problems(tool, seen)
            if problems:
                errors[str(index)] = problems
            seen.add(tool["name"])
        if errors:
            raise serializers.ValidationError(errors)
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


def _tool_problems(tool: dict[str, Any], seen: set[str]) -> dict[str, list[str]]:
    """What is wrong with one tool beyond its fields' own limits."""
    problems: dict[str, list[str]] = {}
    name = tool["name"]
    if name in contracts.RESERVED_TOOL_NAMES:
        problems["name"] = [f"{name!r} is a built-in tool; choose another name."]
    elif name in seen:
        problems["name"] = [f"Another tool is already named {name!r}."]
    url_problem = _tool_url_problem(tool["url"])
    if url_problem:
        problems["url"] = [url_problem]
    parameters_problem = _parameters_problem(tool["parameters"])
    if parameters_problem:
        problems["parameters"] = [parameters_problem]
    return problems


def _tool_url_problem(url: str) -> str | None:
    schemes = ("https", "http") if settings.TOOLS_ALLOW_HTTP else ("https",)
    if url.split(":", 1)[0].lower() not in schemes:
        return "Must be an https URL."
    try:
        ssrf.check_url_form(url, allowed_networks=ssrf.parse_networks(settings.OUTBOUND_ALLOWED_NETWORKS))
    except ssrf.DestinationRefused as error:
        return str(error)
    return None


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _parameters_problem(parameters: dict[str, Any]) -> str | None:
    try:
        size = len(json.dumps(parameters, ensure_ascii=False).encode())
    except ValueError:
        return "Must be plain JSON."
    if size > contracts.MAX_TOOL_PARAMETERS_BYTES:
        return f"Must be at most {contracts.MAX_TOOL_PARAMETERS_BYTES} bytes as JSON."
    if _depth(parameters) > contracts.MAX_TOOL_PARAMETERS_DEPTH:
        return f"Must be nested at most {contracts.MAX_TOOL_PARAMETERS_DEPTH} levels deep."
    if parameters.get("type") != "object":
        return 'Must be a JSON Schema of an object ("type": "object").'
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as error:
        return f"Not a valid JSON Schema: {error.message}"
    return None
