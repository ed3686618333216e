"""Reads for webhook endpoints and deliveries, scoped to the caller's organization."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from accounts.models import Organization
from callmissed.selectors import get_or_not_found
from webhooks.models import WebhookDelivery, WebhookEndpoint


def webhook_endpoint_list(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization=organization).order_by("-created_at", "-id")


def webhook_endpoint_get(*, organization: Organization, endpoint_id: Any) -> WebhookEndpoint:
    rows = WebhookEndpoint.objects.filter(organization=organization)
    return get_or_not_found(rows, endpoint_id, "Webhook endpoint not found.")


def webhook_delivery_list(*, endpoint: WebhookEndpoint, status: str | None = None) -> QuerySet[WebhookDelivery]:
    deliveries = WebhookDelivery.objects.filter(endpoint=endpoint)
    if status:
        deliveries = deliveries.filter(status=status)
    return deliveries.prefetch_related("attempts")


def webhook_delivery_get(*, endpoint: WebhookEndpoint, delivery_id: Any) -> WebhookDelivery:
    rows = WebhookDelivery.objects.filter(endpoint=endpoint)
    return get_or_not_found(rows, delivery_id, "Webhook delivery not found.")


def webhook_endpoints_disabled(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    """Endpoints the platform disabled after failures, for the dashboard's banner."""
    return WebhookEndpoint.objects.filter(organization=organization, enabled=False, failing_since__isnull=False)
