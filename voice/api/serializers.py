"""Output shapes shared by the session endpoints, each reading what a service or selector returns.

A serializer's class docstring becomes its schema description: notes for readers of the code are
comments."""

from __future__ import annotations

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


# Reads a ``VoiceSession``.
class SessionSummarySerializer(serializers.ModelSerializer):
    config = SessionConfigOutputSerializer(read_only=True)

    class Meta:
        model = VoiceSession
        fields = SUMMARY_FIELDS


class TranscriptSegmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = TranscriptSegment
        fields = ["role", "text", "language", "start_offset_ms", "end_offset_ms", "created_at"]
