"""Input and output shapes of the webhooks API."""

from __future__ import annotations

from rest_framework import serializers

from billing.api.serializers import StrictSerializer
from webhooks.models import EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from webhooks.services import MAX_ROTATION_OVERLAP

_EVENT_TYPES = serializers.ListField(
    child=serializers.ChoiceField(choices=EventType.choices),
    allow_empty=False,
    max_length=len(EventType.choices),
    help_text="Events this endpoint receives.",
)


class EndpointCreateInputSerializer(StrictSerializer):
    url = serializers.URLField(max_length=2000, help_text="http(s) URL on the public internet.")
    event_types = _EVENT_TYPES
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class EndpointUpdateInputSerializer(StrictSerializer):
    url = serializers.URLField(max_length=2000, required=False)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        allow_empty=False,
        max_length=len(EventType.choices),
        required=False,
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    enabled = serializers.BooleanField(required=False, help_text="true re-enables an endpoint that was disabled.")


class RotateSecretInputSerializer(StrictSerializer):
    overlap_seconds = serializers.IntegerField(
        min_value=0,
        max_value=int(MAX_ROTATION_OVERLAP.total_seconds()),
        required=False,
        default=86400,
        help_text="How long the previous secret keeps signing beside the new one (default 24 h).",
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


class DeliveryFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=WebhookDelivery.Status.choices, required=False)
    cursor = serializers.CharField(required=False, help_text="A page's next or previous cursor, unchanged.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, help_text="Page size (default 20).")
