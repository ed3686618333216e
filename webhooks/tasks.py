"""Celery adapters for webhook delivery: one attempt per task, and a sweep that queues what is due."""

from __future__ import annotations

from celery import shared_task

from callmissed.celery import DB_RETRY
from webhooks import services

TASK_DELIVER = "webhooks.deliver"
TASK_DELIVER_DUE = "webhooks.deliver_due"
TASK_PRUNE_DELIVERIES = "webhooks.prune_deliveries"

# Retries here are for our database only; the customer's failures are retried through the row's
# next_attempt_at (hours apart, longer than the broker's visibility timeout allows a countdown).


@shared_task(name=TASK_DELIVER, **DB_RETRY)
def deliver(*, delivery_id: str) -> bool:
    """One attempt if due; a duplicate or early task does nothing (the row's claim decides)."""
    return services.webhook_delivery_attempt(delivery_id=delivery_id) is not None


@shared_task(name=TASK_DELIVER_DUE, **DB_RETRY)
def deliver_due() -> int:
    return services.webhook_deliveries_queue_due()


@shared_task(name=TASK_PRUNE_DELIVERIES, **DB_RETRY)
def prune_deliveries() -> int:
    return services.webhook_deliveries_prune()
