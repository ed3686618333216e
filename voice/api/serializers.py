"""Output shapes shared by the session endpoints, each reading what a service or selector returns.

A serializer's class docstring becomes its schema description: notes for readers of the code are
comments."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from agent_worker import contracts
from callmissed.serializers import ContractSerializer
from voice.models import TranscriptSegment, VoiceSession

SUMMARY_FIELDS = [
    "id",
    "status",
    "end_reason",
    "transport",
    "config",
    "metadata",
    "created_at",
    "started_at",
    "ended_at",
    "duration_seconds",
]


@extend_schema_serializer(component_name="SessionConfig")
class SessionConfigOutputSerializer(ContractSerializer):
    """The session's config, as its agent runs it."""

    contract = contracts.SessionConfig
    contract_output = True

    def get_attribute(self, instance: Any) -> Any:
        # The session's ``config()`` called at once: DRF would inspect its signature first, on
        # every row of a page.
        for name in self.source_attrs[:-1]:
            instance = getattr(instance, name)
        return getattr(instance, self.source_attrs[-1])()


# Reads a ``VoiceSession``.
class SessionSummarySerializer(serializers.ModelSerializer):
    config = SessionConfigOutputSerializer(read_only=True)

    class Meta:
        model = VoiceSession
        fields = SUMMARY_FIELDS


# Reads a service's or selector's result: the session's own fields from its ``session``, the rest
# (declared by subclasses) from the result itself.
class SessionInResultSerializer(SessionSummarySerializer):
    config = SessionConfigOutputSerializer(source="session.config", read_only=True)

    def build_field(self, field_name: str, info: Any, model_class: Any, nested_depth: int) -> tuple[Any, Any]:
        field_class, kwargs = super().build_field(field_name, info, model_class, nested_depth)
        return field_class, {**kwargs, "source": f"session.{field_name}"}


@extend_schema_serializer(component_name="ToolCall")
class ToolCallOutputSerializer(ContractSerializer):
    """A tool call the agent made: its arguments and the start of its result, and how long it took."""

    contract = contracts.ToolCallRecord
    contract_output = True


class TranscriptSegmentSerializer(serializers.ModelSerializer):
    tool_call = ToolCallOutputSerializer(read_only=True, allow_null=True)

    class Meta:
        model = TranscriptSegment
        fields = ["role", "text", "language", "start_offset_ms", "end_offset_ms", "tool_call", "created_at"]
