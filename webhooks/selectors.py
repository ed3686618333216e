"""Reads for webhook endpoints and deliveries, scoped to the caller's organization."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet

from accounts.models import Organization
from callmissed.errors import NotFound
from webhooks.models import WebhookDelivery, WebhookEndpoint


def _uuid(value: Any, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} not found.") from None


def webhook_endpoint_list(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization=organization).order_by("-created_at", "-id")


def webhook_endpoint_get(*, organization: Organization, endpoint_id: Any) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(
        organization=organization, pk=_uuid(endpoint_id, "Webhook endpoint")
    ).first()
    if endpoint is None:
        raise NotFound("Webhook endpoint not found.")
    return endpoint


def webhook_delivery_list(*, endpoint: WebhookEndpoint, status: str | None = None) -> QuerySet[WebhookDelivery]:
    deliveries = WebhookDelivery.objects.filter(endpoint=endpoint)
    if status:
        deliveries = deliveries.filter(status=status)
    return deliveries.prefetch_related("attempts")


def webhook_delivery_get(*, endpoint: WebhookEndpoint, delivery_id: Any) -> WebhookDelivery:
    delivery = WebhookDelivery.objects.filter(endpoint=endpoint, pk=_uuid(delivery_id, "Webhook delivery")).first()
    if delivery is None:
        raise NotFound("Webhook delivery not found.")
    return delivery


def webhook_endpoints_disabled(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    """Endpoints the platform disabled after failures, for the dashboard's banner."""
    return WebhookEndpoint.objects.filter(organization=organization, enabled=False, failing_since__isnull=False)
