from django.contrib import admin

from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "organization", "enabled", "failing_since", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["url", "organization__name"]
    # The encrypted secrets are never shown; rotation happens through the API or dashboard.
    exclude = ["secret_encrypted", "previous_secret_encrypted"]
    readonly_fields = ["organization", "failing_since", "previous_secret_expires_at"]


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "attempted_at", "status_code", "succeeded", "latency_ms", "response_excerpt", "error"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["event_id", "event_type", "endpoint", "status", "attempt_count", "next_attempt_at", "created_at"]
    list_filter = ["status", "event_type"]
    search_fields = ["event_id"]
    readonly_fields = ["organization", "endpoint", "event_id", "event_type", "payload", "created_at"]
    inlines = [WebhookAttemptInline]
