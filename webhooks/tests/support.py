"""Endpoints and events for the webhook tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from accounts.models import Organization
from webhooks import services
from webhooks.models import EventType, WebhookDelivery

ALL_EVENTS = [t.value for t in EventType]


def endpoint_for(organization: Organization, url: str, events: list[str] | None = None) -> services.EndpointWithSecret:
    return services.webhook_endpoint_create(organization=organization, url=url, event_types=events or ALL_EVENTS)


def emit(organization: Organization, source: str = "s1", now: datetime | None = None, **data: Any) -> WebhookDelivery:
    (delivery,) = services.webhook_event_emit(
        organization_id=organization.pk,
        event_type=EventType.SESSION_STARTED,
        source=source,
        data=lambda: {"id": source, **data},
        now=now,
    )
    return delivery
