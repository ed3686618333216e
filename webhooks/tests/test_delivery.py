"""Delivery as a customer's receiver sees it: signed per Standard Webhooks, retried with backoff
on a receiver that fails on purpose (an injected clock, no sleeping), disabled after a day of
failures with a notice, redelivered on request, and never to a target inside the walls."""

from __future__ import annotations

import itertools
import logging
import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook

from accounts.models import AuditLog, Membership
from accounts.tests.factories import UserFactory, make_org
from agent_worker import contracts
from billing import selectors as billing_selectors
from billing.tests.support import KIMI_TURN, apply_usage, usage_event
from callmissed.errors import Conflict
from outbound import client, signing, ssrf
from testsupport.fakes.webhook_receiver import WebhookReceiver
from voice import lifecycle
from voice.tests.factories import TranscriptSegmentFactory, VoiceSessionFactory
from webhooks import services
from webhooks.models import EventType, WebhookDelivery, WebhookEndpoint
from webhooks.tests.conftest import documented_verifier
from webhooks.tests.support import emit, endpoint_for


def outcomes() -> dict[str, float]:
    """callmissed_webhook_deliveries_total as /metrics shows it, per outcome."""
    names = ("delivered", "failed", "exhausted", "refused", "disabled")
    return {o: REGISTRY.get_sample_value("callmissed_webhook_deliveries_total", {"outcome": o}) or 0.0 for o in names}


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {o: n - before[o] for o, n in outcomes().items() if n != before[o]}


pytestmark = pytest.mark.django_db


def _run_until_settled(delivery: WebhookDelivery, rng: Any = random.random) -> list[Any]:
    """Attempt the delivery at each of its due times, as the sweep would, until it settles."""
    attempts = []
    delivery.refresh_from_db()
    while delivery.status == WebhookDelivery.Status.PENDING:
        assert delivery.next_attempt_at is not None
        attempt = services.webhook_delivery_attempt(delivery_id=delivery.pk, now=delivery.next_attempt_at, rng=rng)
        assert attempt is not None
        attempts.append(attempt)
        delivery.refresh_from_db()
    return attempts


def test_a_call_is_reported_signed_and_verifies_with_the_documented_snippet_and_the_library(
    receiver: WebhookReceiver, django_capture_on_commit_callbacks: Any
) -> None:
    org = make_org()
    secret = endpoint_for(org, receiver.url()).secret
    verify = documented_verifier()
    receiver.verifier = lambda headers, body: verify(secret, headers, body)
    session = VoiceSessionFactory.create(organization=org, metadata={"crm_id": "42"})
    TranscriptSegmentFactory.create(session=session, role="user", text="Is the clinic open on Sunday?")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.voice_session_mark_active(session_id=str(session.pk))
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.voice_session_end(session_id=str(session.pk), reason=contracts.EndReason.COMPLETED)

    assert [event["type"] for event in receiver.verified] == ["session.started", "session.ended"]
    started, ended = receiver.received
    for request in (started, ended):
        assert Webhook(secret).verify(request.body, request.headers)
        assert request.headers["content-type"] == "application/json"
    assert started.headers["webhook-id"] != ended.headers["webhook-id"]
    data = receiver.verified[1]["data"]
    assert data["id"] == str(session.pk)
    assert (data["status"], data["end_reason"], data["metadata"]) == ("ended", "completed", {"crm_id": "42"})
    assert [(s["role"], s["text"]) for s in data["transcript"]] == [("user", "Is the clinic open on Sunday?")]
    assert data["usage"]["currency"] == "USD" and "total_cost" in data["usage"]
    assert "first_audio_p50_ms" in data["latency"]
    delivery = WebhookDelivery.objects.get(event_type="session.ended")
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    (attempt,) = delivery.attempts.all()
    assert (attempt.status_code, attempt.succeeded, attempt.response_excerpt) == (200, True, "ok")
    assert attempt.latency_ms > 0


def test_a_session_nobody_joined_is_reported_as_session_failed(
    receiver: WebhookReceiver, django_capture_on_commit_callbacks: Any
) -> None:
    org = make_org()
    endpoint_for(org, receiver.url(), events=["session.failed"])
    session = VoiceSessionFactory.create(organization=org)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.voice_sessions_expire_unjoined(now=session.join_deadline + timedelta(seconds=1))
    (request,) = receiver.received
    event = Webhook(endpoint_secret(org)).verify(request.body, request.headers)
    assert event["type"] == "session.failed"
    assert (event["data"]["status"], event["data"]["end_reason"]) == ("failed", "unjoined")
    assert event["data"]["error"]


def endpoint_secret(org: Any) -> str:
    endpoint = WebhookEndpoint.objects.get(organization=org)
    return services.endpoint_secrets(endpoint=endpoint, now=timezone.now())[0]


def test_a_low_prepaid_balance_is_reported_once_when_it_crosses_the_threshold(
    receiver: WebhookReceiver, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    org = make_org()
    endpoint_for(org, receiver.url(), events=["billing.low_balance"])
    account = billing_selectors.billing_account_get(organization=org)
    settings.BILLING_LOW_BALANCE_USD = str(account.balance - Decimal("0.000001"))
    session = VoiceSessionFactory.create(organization=org)
    with django_capture_on_commit_callbacks(execute=True):
        apply_usage(usage_event(session, *KIMI_TURN))
        apply_usage(usage_event(session, *KIMI_TURN))  # already below: no second
    (request,) = receiver.received
    event = Webhook(endpoint_secret(org)).verify(request.body, request.headers)
    assert event["type"] == "billing.low_balance"
    assert event["data"]["organization_id"] == str(org.pk)
    assert Decimal(event["data"]["balance"]) < Decimal(event["data"]["threshold"])


def test_a_failing_receiver_is_retried_with_backoff_and_jitter_for_a_day_then_disabled_with_a_notice(
    receiver: WebhookReceiver, django_capture_on_commit_callbacks: Any
) -> None:
    org = make_org()
    owner = UserFactory.create(email="owner@example.com")
    Membership.objects.create(user=owner, organization=org, role=Membership.Role.OWNER)
    receiver.default_status = 500
    endpoint = endpoint_for(org, receiver.url()).endpoint
    t0 = timezone.now()
    delivery = emit(org, now=t0)
    before = outcomes()

    with django_capture_on_commit_callbacks(execute=True):
        attempts = _run_until_settled(delivery, rng=random.Random(16).random)

    # The last attempt is the one that switched the endpoint off.
    assert counted_since(before) == {"failed": len(attempts) - 1, "disabled": 1}

    assert len(receiver.received) == len(attempts)
    assert {r.headers["webhook-id"] for r in receiver.received} == {delivery.event_id}
    assert all(a.status_code == 500 and a.response_excerpt == "receiver failing on purpose" for a in attempts)
    waits = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    for number, wait in enumerate(waits[:-1], start=1):
        base = min(services.BACKOFF_BASE_SECONDS * 2 ** (number - 1), services.BACKOFF_CAP_SECONDS)
        assert 0.75 * base <= wait < 1.25 * base, (number, wait)
    assert len({round(w / min(30 * 2 ** (n - 1), 14400), 3) for n, w in enumerate(waits[:8], 1)}) > 1, "jittered"
    assert 12 <= len(attempts) <= 18
    assert attempts[-1].attempted_at - t0 >= timedelta(hours=24)
    assert attempts[-2].attempted_at - t0 < timedelta(hours=24)

    delivery.refresh_from_db()
    endpoint.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.FAILED and delivery.next_attempt_at is None
    assert not endpoint.enabled and "24 hours" in endpoint.disabled_reason
    assert AuditLog.objects.filter(organization=org, action="webhook.disabled", target=str(endpoint.pk)).exists()
    (notice,) = mail.outbox
    assert notice.to == ["owner@example.com"] and receiver.url() in notice.body
    # A disabled endpoint gets no new events.
    assert (
        services.webhook_event_emit(
            organization_id=org.pk, event_type=EventType.SESSION_STARTED, source="s2", data=lambda: {}
        )
        == []
    )


def test_a_receiver_answering_nul_bytes_gets_its_attempt_recorded(receiver: WebhookReceiver) -> None:
    """PostgreSQL text cannot hold NUL: an answer carrying one must still settle as an attempt,
    not crash before it is recorded and come round again every lease."""
    org = make_org()
    endpoint_for(org, receiver.url())
    delivery = emit(org, now=timezone.now())

    def nul_answer(url: str, **_: Any) -> client.Response:
        return client.Response(status=200, body=b"ok\x00then more", url=url, elapsed_ms=1.0)

    attempt = services.webhook_delivery_attempt(delivery_id=delivery.pk, now=delivery.next_attempt_at, post=nul_answer)
    assert attempt is not None and attempt.succeeded
    assert attempt.response_excerpt == "ok\ufffdthen more"


def test_a_delivery_being_sent_cannot_be_redelivered_until_its_attempt_is_recorded(receiver: WebhookReceiver) -> None:
    org = make_org()
    receiver.default_status = 500
    endpoint_for(org, receiver.url())
    delivery = emit(org, now=timezone.now())
    now = delivery.next_attempt_at
    assert now is not None
    assert services._claim(delivery.pk, now) is not None  # another task holds it, mid-send
    delivery.refresh_from_db()
    with pytest.raises(Conflict):
        services.webhook_delivery_redeliver(delivery=delivery, now=now)

    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=now)
    attempt = services.webhook_delivery_attempt(delivery_id=delivery.pk, now=now)  # recorded
    assert attempt is not None and not attempt.succeeded
    services.webhook_delivery_redeliver(delivery=delivery, now=now)  # a finished attempt: fine


def test_a_delivery_past_its_retry_window_is_settled_not_attempted(receiver: WebhookReceiver) -> None:
    org = make_org()
    endpoint_for(org, receiver.url())
    delivery = emit(org, now=timezone.now())
    late = delivery.retry_until + services.ATTEMPT_LEASE + timedelta(seconds=1)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=late)
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, now=late) is None
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.FAILED and receiver.received == []


def test_a_receiver_that_recovers_gets_the_message_and_its_failure_run_ends(receiver: WebhookReceiver) -> None:
    org = make_org()
    receiver.script = [500, 503]
    endpoint = endpoint_for(org, receiver.url()).endpoint
    delivery = emit(org, now=timezone.now())
    before = outcomes()
    attempts = _run_until_settled(delivery)
    assert [a.status_code for a in attempts] == [500, 503, 200]
    assert counted_since(before) == {"failed": 2, "delivered": 1}
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is None
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED and delivery.attempt_count == 3


def test_an_attempt_not_yet_due_or_already_made_sends_nothing(receiver: WebhookReceiver) -> None:
    org = make_org()
    endpoint_for(org, receiver.url())
    t0 = timezone.now()
    delivery = emit(org, now=t0)
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, now=t0 - timedelta(seconds=1)) is None
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, now=t0) is not None
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, now=t0 + timedelta(hours=1)) is None
    assert len(receiver.received) == 1


def test_the_same_event_reported_twice_is_one_delivery(receiver: WebhookReceiver) -> None:
    org = make_org()
    endpoint_for(org, receiver.url())
    first = emit(org, source="session-1")
    again = services.webhook_event_emit(
        organization_id=org.pk, event_type=EventType.SESSION_STARTED, source="session-1", data=lambda: {}
    )
    assert again == []
    assert WebhookDelivery.objects.get().pk == first.pk


def test_redelivery_sends_the_same_message_once_more(
    receiver: WebhookReceiver, django_capture_on_commit_callbacks: Any
) -> None:
    org = make_org()
    endpoint_for(org, receiver.url())
    delivery = emit(org)
    _run_until_settled(delivery)
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_delivery_redeliver(delivery=delivery)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.event_id
    assert first.body == second.body
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED and delivery.attempt_count == 2


def test_the_sweep_sends_a_delivery_whose_first_task_was_lost(receiver: WebhookReceiver) -> None:
    org = make_org()
    endpoint_for(org, receiver.url())
    delivery = emit(org)  # its on-commit task never ran
    assert services.webhook_deliveries_queue_due() == 1  # eager Celery: attempted inline
    assert len(receiver.received) == 1
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED


def test_a_private_target_is_never_called_when_the_setting_does_not_allow_it(
    receiver: WebhookReceiver, settings: Any
) -> None:
    org = make_org()
    endpoint_for(org, receiver.url())
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    delivery = emit(org, now=timezone.now())
    before = outcomes()
    attempt = services.webhook_delivery_attempt(delivery_id=delivery.pk, now=delivery.next_attempt_at)
    assert attempt is not None
    assert counted_since(before) == {"refused": 1}
    assert attempt.status_code is None and attempt.error.endswith(ssrf.UNREACHABLE_NAME)
    assert receiver.received == []
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at > attempt.attempted_at


def test_a_redirect_into_the_walls_is_refused(receiver: WebhookReceiver) -> None:
    org = make_org()
    receiver.redirects["/hook"] = "http://169.254.169.254/latest/meta-data/iam/"
    endpoint_for(org, receiver.url())
    delivery = emit(org, now=timezone.now())
    attempt = services.webhook_delivery_attempt(delivery_id=delivery.pk, now=delivery.next_attempt_at)
    assert attempt is not None and attempt.status_code is None and attempt.error.endswith(ssrf.UNREACHABLE_NAME)
    assert [r.path for r in receiver.received] == ["/hook"]


def test_rotation_signs_with_both_secrets_during_the_overlap_then_only_the_new_one(receiver: WebhookReceiver) -> None:
    org = make_org()
    created = endpoint_for(org, receiver.url())
    t0 = timezone.now()
    rotated = services.webhook_endpoint_rotate_secret(endpoint=created.endpoint, overlap=timedelta(hours=1), now=t0)
    first = emit(org, source="a", now=t0)
    services.webhook_delivery_attempt(delivery_id=first.pk, now=t0)
    later = t0 + timedelta(hours=2)
    second = emit(org, source="b", now=later)
    services.webhook_delivery_attempt(delivery_id=second.pk, now=later)
    during, after = receiver.received
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    for secret in (created.secret, rotated.secret):
        signing.verify(secret=secret, headers=during.headers, body=during.body, now=t0.timestamp())
    signing.verify(secret=rotated.secret, headers=after.headers, body=after.body, now=later.timestamp())
    with pytest.raises(signing.SignatureError):
        signing.verify(secret=created.secret, headers=after.headers, body=after.body, now=later.timestamp())


def test_no_secret_is_logged_audited_or_stored_in_the_clear(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    org = make_org()
    receiver.default_status = 500
    created = endpoint_for(org, receiver.url())
    rotated = services.webhook_endpoint_rotate_secret(endpoint=created.endpoint)
    delivery = emit(org, now=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        _run_until_settled(delivery)
    secrets: list[str] = [created.secret, rotated.secret]
    keys = [s.removeprefix("whsec_") for s in secrets]
    assert caplog.records, "the delivery path logs"
    audit = " ".join(str(row.detail) for row in AuditLog.objects.filter(organization=org))
    endpoint = WebhookEndpoint.objects.get()
    stored = endpoint.secret_encrypted + endpoint.previous_secret_encrypted
    notices = " ".join(str(m.body) for m in mail.outbox)
    for text in [*secrets, *keys]:
        assert text not in caplog.text
        assert text not in audit
        assert text not in stored
        assert text not in notices


def test_a_redelivery_after_the_retry_window_is_one_attempt_and_inside_it_keeps_the_retries(
    receiver: WebhookReceiver,
) -> None:
    org = make_org()
    receiver.default_status = 500
    endpoint_for(org, receiver.url())
    t0 = timezone.now() - timedelta(hours=30)
    over = emit(org, source="over", now=t0)
    WebhookDelivery.objects.filter(pk=over.pk).update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None)
    services.webhook_delivery_redeliver(delivery=over)
    services.webhook_delivery_attempt(delivery_id=over.pk)
    over.refresh_from_db()
    assert over.status == WebhookDelivery.Status.FAILED and over.next_attempt_at is None

    recent = emit(org, source="recent")
    services.webhook_delivery_redeliver(delivery=recent)
    services.webhook_delivery_attempt(delivery_id=recent.pk)
    recent.refresh_from_db()
    assert recent.status == WebhookDelivery.Status.PENDING and recent.next_attempt_at is not None
    assert len(receiver.received) == 2


def test_settled_deliveries_past_the_retention_are_pruned_pending_ones_never(
    receiver: WebhookReceiver, settings: Any
) -> None:
    settings.WEBHOOK_DELIVERY_RETENTION_DAYS = 30
    org = make_org()
    endpoint_for(org, receiver.url())
    old_done, old_pending, recent_done = emit(org, source="a"), emit(org, source="b"), emit(org, source="c")
    for delivery in (old_done, recent_done):
        services.webhook_delivery_attempt(delivery_id=delivery.pk)
    long_ago = timezone.now() - timedelta(days=31)
    WebhookDelivery.objects.filter(pk__in=[old_done.pk, old_pending.pk]).update(created_at=long_ago)
    assert services.webhook_deliveries_prune(batch_size=1) == 1
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {old_pending.pk, recent_done.pk}
