"""Shapes more than one webhooks operation answers with; each operation's own input is its view's."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from callmissed.serializers import StrictChoiceField, StrictListField
from webhooks.models import EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint


def event_types_field(**options: Any) -> serializers.ListField:
    """The event types an endpoint receives: at least one, at most as many as there are."""
    return StrictListField(
        child=StrictChoiceField(choices=EventType.choices),
        allow_empty=False,
        max_length=len(EventType.choices),
        **options,
    )


class EndpointOutputSerializer(serializers.ModelSerializer):
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EventType.choices))

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "event_types",
            "enabled",
            "disabled_reason",
            "failing_since",
            "previous_secret_expires_at",
            "created_at",
            "updated_at",
        ]


class EndpointWithSecretOutputSerializer(EndpointOutputSerializer):
    secret = serializers.CharField(help_text="whsec_… signing secret: shown only in this response.")

    class Meta(EndpointOutputSerializer.Meta):
        fields = [*EndpointOutputSerializer.Meta.fields, "secret"]


class AttemptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "attempted_at", "status_code", "succeeded", "latency_ms", "response_excerpt", "error"]


class DeliveryOutputSerializer(serializers.ModelSerializer):
    attempts = AttemptOutputSerializer(many=True, read_only=True)
    payload = serializers.JSONField(help_text="The body sent: {type, timestamp, data}.")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "next_attempt_at",
            "created_at",
            "delivered_at",
            "payload",
            "attempts",
        ]
