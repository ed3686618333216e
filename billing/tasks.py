"""Celery tasks: meter events to Stripe, Stripe events from webhooks, and reconciliation.

Every task is safe to run twice: meter events carry a stable identifier Stripe deduplicates on,
Stripe events are applied once per id. Countdowns stay far below the broker's visibility timeout.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.db.models import Sum
from django.utils import timezone

from billing import services, stripe_gateway, webhooks
from billing.models import BillingAccount, MeterEventReport, ReconciliationReport, StripeWebhookEvent
from callmissed.errors import ValidationFailed

logger = logging.getLogger(__name__)

_RETRY: dict[str, Any] = {
    "autoretry_for": (stripe_gateway.StripeFailure, OperationalError, InterfaceError),
    "retry_backoff": 5,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 8,
}
# A pending report older than this was not enqueued (crash between commit and enqueue) or ran out of retries.
FLUSH_AFTER = timedelta(minutes=2)
RECONCILE_WINDOW = timedelta(days=1)
# Stripe sums meter events a few minutes after receiving them: the newest minutes are left to the next run.
RECONCILE_LAG = timedelta(minutes=10)
RECOVER_EVENTS_SINCE = timedelta(days=3)
# Stored events still unprocessed (a top-up that keeps failing is never settled) retried per run,
# oldest first: the hourly run stays short whatever piles up.
RETRY_STORED_EVENTS = 200


@shared_task(name="billing.report_meter_event", **_RETRY)
def report_meter_event(*, report_id: int) -> str:
    return services.meter_event_send(report_id=report_id).status


@shared_task(name="billing.flush_meter_events")
def flush_meter_events() -> int:
    stale = MeterEventReport.objects.filter(
        status=MeterEventReport.Status.PENDING, created_at__lt=timezone.now() - FLUSH_AFTER
    ).values_list("pk", flat=True)[:1000]
    for report_id in stale:
        report_meter_event.delay(report_id=report_id)
    return len(stale)


@shared_task(
    name="billing.apply_stripe_event", **{**_RETRY, "autoretry_for": (*_RETRY["autoretry_for"], webhooks.ApplyDeferred)}
)
def apply_stripe_event(*, event_id: str) -> bool:
    return webhooks.stripe_event_apply(event_id=event_id)


@shared_task(name="billing.reconcile_stripe", **_RETRY)
def reconcile_stripe() -> dict[str, int]:
    """Recover webhooks that never arrived, retry stored events still unprocessed (their Celery
    retries ran out), then compare each customer's sent usage with Stripe's."""
    if not stripe_gateway.enabled():
        return {"recovered": 0, "drifting": 0}
    recovered = 0
    tried: set[str] = set()
    since = timezone.now() - RECOVER_EVENTS_SINCE
    for event in stripe_gateway.events_since(created_gte=since, types=list(webhooks.HANDLED_TYPES)):
        # The same checks as a webhook delivery: a listed event is no more trusted than a pushed one.
        try:
            row, created = webhooks.stripe_event_receive(event=event)
        except ValidationFailed:
            continue  # logged, and stored with its error when it had an id
        if created or row.processed_at is None:
            tried.add(row.event_id)
            recovered += _apply_one(row.event_id)
    stored = StripeWebhookEvent.objects.filter(processed_at__isnull=True, type__in=webhooks.HANDLED_TYPES)
    for event_id in stored.order_by("received_at").values_list("pk", flat=True)[:RETRY_STORED_EVENTS]:
        if event_id not in tried:
            recovered += _apply_one(event_id)
    drifting = sum(1 for report in _reconcile_meters() if report.drift)
    return {"recovered": recovered, "drifting": drifting}


def _apply_one(event_id: str) -> int:
    # One event failing again (already recorded on its row) must not hold up the others.
    try:
        return int(webhooks.stripe_event_apply(event_id=event_id))
    except webhooks.RETRYABLE:
        return 0


def _reconcile_meters() -> list[ReconciliationReport]:
    end = (timezone.now() - RECONCILE_LAG).replace(second=0, microsecond=0)
    start = end - RECONCILE_WINDOW
    reports = []
    for account in BillingAccount.objects.exclude(stripe_customer_id="").select_related("organization"):
        local = (
            MeterEventReport.objects.filter(
                usage_record__organization=account.organization,
                status=MeterEventReport.Status.SENT,
                usage_record__occurred_at__gte=start,
                usage_record__occurred_at__lt=end,
            ).aggregate(v=Sum("value"))["v"]
            or 0
        )
        remote = stripe_gateway.meter_total(customer_id=account.stripe_customer_id, start=start, end=end)
        report = ReconciliationReport.objects.create(
            organization=account.organization,
            window_start=start,
            window_end=end,
            local_value=local,
            stripe_value=remote,
        )
        if report.drift:
            logger.warning(
                "Stripe meter drift for %s: local %s µUSD, Stripe %s µUSD", account.organization, local, remote
            )
        reports.append(report)
    return reports
