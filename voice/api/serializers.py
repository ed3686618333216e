"""Output shapes shared by the session endpoints."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from voice.models import TranscriptSegment, VoiceSession


class SessionConfigOutputSerializer(serializers.Serializer):
    system_prompt = serializers.CharField()
    voice = serializers.CharField()
    language = serializers.CharField()
    llm_model = serializers.CharField()
    tts_provider = serializers.CharField()
    max_duration_seconds = serializers.IntegerField()


class SessionSummarySerializer(serializers.ModelSerializer):
    config = serializers.SerializerMethodField()

    class Meta:
        model = VoiceSession
        fields = [
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

    def get_config(self, obj: VoiceSession) -> dict[str, Any]:
        return SessionConfigOutputSerializer(obj.config().model_dump()).data


class TranscriptSegmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = TranscriptSegment
        fields = ["role", "text", "language", "start_offset_ms", "end_offset_ms", "created_at"]
