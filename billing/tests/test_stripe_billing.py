"""Stripe through the real ``stripe`` client against the loopback fake: meter events exactly once,
Checkout top-ups, webhooks verified and applied once in any order, reconciliation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from celery.exceptions import Retry
from django.utils import timezone

from accounts.models import AuditLog
from billing import selectors, services, tasks
from billing.models import BillingAccount, MeterEventReport, ReconciliationReport, StripeWebhookEvent
from billing.tests.conftest import WEBHOOK
from billing.tests.conftest import deliver as _deliver
from billing.tests.support import KIMI_TURN, C, apply_usage, usage_event
from testsupport.fakes.stripe_api import event_payload
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db

METER_EVENTS = "/v1/billing/meter_events"


def _bill_a_turn(client, capture) -> list[MeterEventReport]:
    session = VoiceSessionFactory.create(organization=client.org)
    with capture(execute=True):  # the meter-event tasks are enqueued on commit
        applied = apply_usage(usage_event(session, *KIMI_TURN))
    assert applied is not None
    return [r.meter_report for r in applied.records]


def test_usage_reaches_stripe_as_one_meter_event_per_record(api, stripe_fake, django_capture_on_commit_callbacks):
    reports = _bill_a_turn(api, django_capture_on_commit_callbacks)

    assert {r.status for r in MeterEventReport.objects.all()} == {MeterEventReport.Status.SENT}
    sent = sorted(int(e["payload"]["value"]) for e in stripe_fake.meter_events)
    assert sent == sorted(r.value for r in reports) == [736, 780, 5740, 41462]  # micro-USD
    customer = BillingAccount.objects.get(organization=api.org).stripe_customer_id
    assert {e["payload"]["stripe_customer_id"] for e in stripe_fake.meter_events} == {customer}
    assert list(stripe_fake.customers) == [customer]
    assert all(r.headers.get("Idempotency-Key") for r in stripe_fake.requests if r.method == "POST")


def test_a_crash_after_stripe_recorded_the_event_does_not_bill_twice(
    api, stripe_fake, django_capture_on_commit_callbacks
):
    # Stripe records the first event, then the connection dies before we hear back: the client retries.
    stripe_fake.drop_connection_next(METER_EVENTS, processed=True)
    _bill_a_turn(api, django_capture_on_commit_callbacks)
    assert len(stripe_fake.meter_events) == 4
    assert len(stripe_fake.requests_to(METER_EVENTS)) == 5

    # Our worker died after sending but before marking the report sent: the flush resends it.
    report = MeterEventReport.objects.order_by("pk").first()
    assert report is not None
    MeterEventReport.objects.filter(pk=report.pk).update(
        status=MeterEventReport.Status.PENDING, created_at=timezone.now() - timedelta(minutes=10)
    )
    assert tasks.flush_meter_events() == 1
    assert len(stripe_fake.meter_events) == 4
    report.refresh_from_db()
    assert report.status == MeterEventReport.Status.SENT and report.attempts == 2


def test_stripe_outage_is_retried_until_the_event_lands_once(api, stripe_fake, django_capture_on_commit_callbacks):
    stripe_fake.fail_next(METER_EVENTS, status=500, times=50)
    with pytest.raises(Retry, match="APIError"):
        _bill_a_turn(api, django_capture_on_commit_callbacks)  # eager Celery surfaces the retry it schedules
    assert stripe_fake.meter_events == []
    pending = MeterEventReport.objects.filter(status=MeterEventReport.Status.PENDING)
    assert pending.count() == 4 and "APIError" in pending.first().last_error  # type: ignore[union-attr]

    stripe_fake._faults.clear()
    MeterEventReport.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    tasks.flush_meter_events()
    tasks.flush_meter_events()
    assert len(stripe_fake.meter_events) == 4
    assert not MeterEventReport.objects.filter(status=MeterEventReport.Status.PENDING).exists()


def test_checkout_top_up_credits_the_balance_once(api, stripe_fake) -> None:
    response = api.post(
        "/v1/billing/checkout",
        {"amount_usd": "20.00", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="topup-1",
    )
    assert response.status_code == 201, response.content
    checkout_id = response.json()["id"]
    assert response.json()["url"].startswith("https://")
    created = stripe_fake.checkout_sessions[checkout_id]
    assert created["amount_total"] == 2000 and created["metadata"]["organization_id"] == str(api.org.pk)

    event = stripe_fake.complete_checkout_session(checkout_id)
    first = _deliver(api, event)
    replay = _deliver(api, event)
    assert first.status_code == replay.status_code == 200
    assert (first.json()["duplicate"], replay.json()["duplicate"]) == (False, True)
    assert api.get("/v1/billing/limits").json()["balance"] == "25.000000"

    # The same payment reported again under another event type still credits once.
    late = dict(event, id="evt_async_duplicate", type="checkout.session.async_payment_succeeded")
    assert _deliver(api, late).status_code == 200
    assert api.get("/v1/billing/limits").json()["balance"] == "25.000000"
    # Audited once, as the credit it is, with the balance it left.
    credits = AuditLog.objects.filter(organization=api.org, action=AuditLog.Action.BALANCE_CREDITED)
    [audit] = credits.filter(detail__kind="top_up")
    assert audit.target == f"checkout:{checkout_id}"
    assert (Decimal(audit.detail["amount"]), Decimal(audit.detail["balance"])) == (Decimal(20), Decimal(25))


def test_checkout_validates_the_amount_and_needs_stripe(api, settings, stripe_fake) -> None:
    body = {"amount_usd": "1.00", "success_url": "https://a.example/", "cancel_url": "https://a.example/"}
    response = api.post("/v1/billing/checkout", body, format="json")
    assert response.status_code == 400 and "amount_usd" in response.json()["error"]["fields"]
    bad = api.post("/v1/billing/checkout", {**body, "amount_usd": "10", "coupon": "x"}, format="json")
    assert "coupon" in bad.json()["error"]["fields"]

    settings.STRIPE_SECRET_KEY = ""
    response = api.post("/v1/billing/checkout", {**body, "amount_usd": "10"}, format="json")
    assert response.status_code == 400 and "not configured" in response.json()["error"]["message"]


def test_webhooks_with_a_bad_signature_are_refused(client, stripe_fake) -> None:
    event = event_payload("checkout.session.completed", {"id": "cs_x", "payment_status": "paid"})
    forged = _deliver(client, event, secret="whsec_wrong")
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "validation_error"
    unsigned = client.post(WEBHOOK, event, content_type="application/json")
    assert unsigned.status_code == 400
    assert not StripeWebhookEvent.objects.exists()


def test_payment_events_out_of_order_leave_the_newest_state(api, stripe_fake) -> None:
    customer = services.stripe_customer_ensure(account=selectors.billing_account_get(organization=api.org))
    now = int(timezone.now().timestamp())
    invoice = {"id": "in_1", "object": "invoice", "customer": customer}
    failed = event_payload("invoice.payment_failed", invoice, created=now)
    paid_earlier = event_payload("invoice.paid", invoice, created=now - 3600)

    assert _deliver(api, failed).status_code == 200
    assert _deliver(api, paid_earlier).status_code == 200  # older news, arriving late
    response = api.post("/v1/voice/sessions", {}, format="json")
    assert response.status_code == 402 and "payment failed" in response.json()["error"]["message"]

    _deliver(api, event_payload("invoice.paid", invoice, created=now + 60))
    assert api.post("/v1/voice/sessions", {}, format="json").status_code == 201
    assert StripeWebhookEvent.objects.filter(processed_at__isnull=False).count() == 3


def test_reconciliation_recovers_missed_webhooks_and_reports_drift(
    api, stripe_fake, django_capture_on_commit_callbacks
):
    # Usage an hour ago, so Stripe has summed it by the time reconciliation looks.
    session = VoiceSessionFactory.create(organization=api.org)
    with django_capture_on_commit_callbacks(execute=True):
        apply_usage(usage_event(session, *KIMI_TURN, at=timezone.now() - timedelta(hours=1)))
    checkout = services.checkout_create(
        organization=api.org,
        amount=Decimal("10"),
        success_url="https://a.example/",
        cancel_url="https://a.example/",
        idempotency_key="k1",
    )
    stripe_fake.complete_checkout_session(checkout.id)  # its webhook never arrives

    assert tasks.reconcile_stripe() == {"recovered": 1, "drifting": 0}
    assert api.get("/v1/billing/limits").json()["balance"] == "14.951282"  # 5 − 0.0487184 + 10
    report = ReconciliationReport.objects.get()
    assert report.local_value == report.stripe_value == 48718

    # A report we believe was sent but Stripe never received shows up as drift.
    extra = usage_event(session, (C.STT_SECONDS, "saaras:v3", 3600), at=timezone.now() - timedelta(hours=1))
    applied = apply_usage(extra)  # no on-commit capture: never sent
    assert applied is not None
    MeterEventReport.objects.filter(usage_record__in=applied.records).update(status=MeterEventReport.Status.SENT)
    assert tasks.reconcile_stripe() == {"recovered": 0, "drifting": 1}
    assert ReconciliationReport.objects.first().drift == -336000  # type: ignore[union-attr]
