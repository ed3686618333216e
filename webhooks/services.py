"""Customer webhooks: endpoints (audited writes), events fanned out to deliveries, and delivery
attempts with retries, backoff and the disabling of an endpoint that keeps failing.

Delivery is at least once: an event becomes one ``WebhookDelivery`` row per subscribed endpoint
in the transaction of the change it reports (unique per endpoint and event id, so a repeated
emission adds nothing), and the row is the promise: the task queued after commit is a prompt,
and the ``webhooks.deliver_due`` sweep queues whatever is due. Every attempt is a row.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from accounts.models import AuditLog, Membership, Organization
from callmissed import metrics, queueing
from callmissed.errors import Conflict, ValidationFailed
from outbound import client, signing, ssrf
from webhooks import crypto
from webhooks.models import EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

# Retries continue this long after an event was created; a delivery still failing then is failed.
RETRY_WINDOW = timedelta(hours=24)
# An endpoint whose attempts have all failed for this long is disabled.
DISABLE_AFTER = timedelta(hours=24)
# Attempt n waits BASE * 2**(n-1) seconds, capped, times a jitter in [0.75, 1.25): 30 s, 1 min,
# 2 min … 4 h, about 14 attempts over the day.
BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 4 * 3600
# An attempt claims its delivery for this long, so a duplicate task or the sweep does not send it
# twice at once; longer than any attempt can take (timeout per hop and address).
ATTEMPT_LEASE = timedelta(minutes=5)
DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)
MAX_ROTATION_OVERLAP = timedelta(days=7)
RESPONSE_EXCERPT_CHARS = 1000
USER_AGENT = "CallMissed-Webhooks/1"
_EVENT_NAMESPACE = uuid.UUID("6f1c0f5e-3d55-4a8e-9a51-2f6b0f0d7c11")

Post = Callable[..., client.Response]


@dataclass(frozen=True)
class EndpointWithSecret:
    endpoint: WebhookEndpoint
    secret: str  # returned exactly once (create, rotate), stored only encrypted


def retry_delay(attempt_number: int, *, rng: Callable[[], float] = random.random) -> timedelta:
    """Wait before the attempt after ``attempt_number`` failed ones: exponential, capped, jittered
    so a receiver that comes back is not hit by every delivery in the same second."""
    base = min(BACKOFF_BASE_SECONDS * 2 ** (attempt_number - 1), BACKOFF_CAP_SECONDS)
    return timedelta(seconds=base * (0.75 + 0.5 * rng()))


def event_id_for(*, event_type: str, source: str) -> str:
    """A stable ``webhook-id`` per event: the same change reported twice is one message."""
    return "msg_" + uuid.uuid5(_EVENT_NAMESPACE, f"{event_type}:{source}").hex


def _allowed_networks() -> ssrf.Networks:
    return ssrf.parse_networks(settings.OUTBOUND_ALLOWED_NETWORKS)


def _check_url(url: str) -> None:
    try:
        ssrf.check_url_form(url, allowed_networks=_allowed_networks())
    except ssrf.DestinationRefused as refused:
        raise ValidationFailed(f"This URL cannot receive webhooks: {refused}", fields={"url": [str(refused)]}) from None


def _check_event_types(event_types: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(event_types))
    unknown = [t for t in chosen if t not in EventType.values]
    if unknown or not chosen:
        message = f"Choose one or more of: {', '.join(EventType.values)}."
        raise ValidationFailed(message, fields={"event_types": [message]})
    return chosen


def _audit(endpoint: WebhookEndpoint, action: str, actor: User | None, **detail: Any) -> None:
    AuditLog.objects.create(
        organization_id=endpoint.organization_id,
        actor=actor,
        action=action,
        target=str(endpoint.id),
        detail={"url": endpoint.url, **detail},
    )


@transaction.atomic
def webhook_endpoint_create(
    *,
    organization: Organization,
    url: str,
    event_types: Iterable[str],
    description: str = "",
    actor: User | None = None,
) -> EndpointWithSecret:
    _check_url(url)
    # Counted under the organization's row lock, so concurrent creates cannot pass the cap together.
    Organization.objects.select_for_update().get(pk=organization.pk)
    if WebhookEndpoint.objects.filter(organization=organization).count() >= settings.WEBHOOK_MAX_ENDPOINTS:
        raise Conflict(
            f"An organization has at most {settings.WEBHOOK_MAX_ENDPOINTS} webhook endpoints; delete one first."
        )
    secret = signing.generate_secret()
    endpoint = WebhookEndpoint(
        organization=organization,
        url=url,
        description=description,
        event_types=_check_event_types(event_types),
        secret_encrypted=crypto.encrypt(secret),
    )
    endpoint.full_clean()
    endpoint.save()
    _audit(endpoint, AuditLog.Action.WEBHOOK_CREATED, actor, event_types=endpoint.event_types)
    return EndpointWithSecret(endpoint=endpoint, secret=secret)


@transaction.atomic
def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    event_types: Iterable[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    actor: User | None = None,
) -> WebhookEndpoint:
    """Change what was given. Enabling a disabled endpoint starts its failure count afresh; its
    deliveries failed while it was disabled stay failed (redeliver them one by one)."""
    changed: dict[str, Any] = {}
    if url is not None and url != endpoint.url:
        _check_url(url)
        endpoint.url = changed["url"] = url
    if event_types is not None:
        chosen = _check_event_types(event_types)
        if chosen != endpoint.event_types:
            endpoint.event_types = changed["event_types"] = chosen
    if description is not None and description != endpoint.description:
        endpoint.description = changed["description"] = description
    if enabled is not None and enabled != endpoint.enabled:
        endpoint.enabled = changed["enabled"] = enabled
        endpoint.failing_since = None
        endpoint.disabled_reason = "" if enabled else "Disabled by a user."
    if changed:
        endpoint.full_clean()
        endpoint.save()
        _audit(endpoint, AuditLog.Action.WEBHOOK_UPDATED, actor, changed=sorted(changed))
    return endpoint


@transaction.atomic
def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: User | None = None) -> None:
    _audit(endpoint, AuditLog.Action.WEBHOOK_DELETED, actor)
    endpoint.delete()


@transaction.atomic
def webhook_endpoint_rotate_secret(
    *,
    endpoint: WebhookEndpoint,
    overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
    actor: User | None = None,
    now: datetime | None = None,
) -> EndpointWithSecret:
    """A new secret signs from now on; the old one signs too (a second signature in the header)
    for ``overlap``, so a receiver can switch without dropping a message."""
    if not timedelta(0) <= overlap <= MAX_ROTATION_OVERLAP:
        message = f"The overlap is between 0 and {int(MAX_ROTATION_OVERLAP.total_seconds())} seconds."
        raise ValidationFailed(message, fields={"overlap_seconds": [message]})
    now = now or timezone.now()
    locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    secret = signing.generate_secret()
    locked.previous_secret_encrypted = locked.secret_encrypted if overlap else ""
    locked.previous_secret_expires_at = now + overlap if overlap else None
    locked.secret_encrypted = crypto.encrypt(secret)
    locked.save(update_fields=["secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at"])
    _audit(locked, AuditLog.Action.WEBHOOK_SECRET_ROTATED, actor, overlap_seconds=int(overlap.total_seconds()))
    return EndpointWithSecret(endpoint=locked, secret=secret)


def endpoint_secrets(*, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign a message sent at ``now``: the current one, and the previous one
    inside its overlap window."""
    secrets = [crypto.decrypt(endpoint.secret_encrypted)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_encrypted and expires is not None and now < expires:
        secrets.append(crypto.decrypt(endpoint.previous_secret_encrypted))
    return secrets


def webhook_event_emit(
    *,
    organization_id: Any,
    event_type: EventType,
    source: str,
    data: Callable[[], Mapping[str, Any]],
    now: datetime | None = None,
) -> list[WebhookDelivery]:
    """Record the event for every enabled endpoint of the organization that wants it, inside the
    caller's transaction, and queue the deliveries after commit. ``source`` names the change
    (a session id, a debit) so reporting it again is the same event; ``data`` is built only when
    some endpoint wants it."""
    endpoints = [
        e
        for e in WebhookEndpoint.objects.filter(organization_id=organization_id, enabled=True)
        if event_type in e.event_types
    ]
    if not endpoints:
        return []
    now = now or timezone.now()
    event_id = event_id_for(event_type=event_type, source=source)
    payload = {"type": str(event_type), "timestamp": now.isoformat(), "data": dict(data())}
    created: list[WebhookDelivery] = []
    for endpoint in endpoints:
        delivery, is_new = WebhookDelivery.objects.get_or_create(
            endpoint=endpoint,
            event_id=event_id,
            defaults={
                "organization_id": organization_id,
                "event_type": event_type,
                "payload": payload,
                "next_attempt_at": now,
                "retry_until": now + RETRY_WINDOW,
            },
        )
        if is_new:
            created.append(delivery)
            _queue(delivery)
    return created


def _queue(delivery: WebhookDelivery) -> None:
    from webhooks import tasks  # tasks import this module

    queueing.enqueue_on_commit(tasks.deliver, delivery_id=str(delivery.pk))


def _claim(delivery_id: Any, now: datetime) -> tuple[WebhookDelivery, int] | None:
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("endpoint")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
            return None
        if delivery.next_attempt_at is None or delivery.next_attempt_at > now:
            return None
        # Past its retry window by more than a lease (an attempt that crashed before it was
        # recorded never got to say so), or for an endpoint switched off: settled, not attempted.
        if not delivery.endpoint.enabled or now > delivery.retry_until + ATTEMPT_LEASE:
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.next_attempt_at = None
            delivery.save(update_fields=["status", "next_attempt_at"])
            return None
        delivery.attempt_count += 1
        delivery.next_attempt_at = now + ATTEMPT_LEASE
        delivery.last_attempt_at = now
        delivery.save(update_fields=["attempt_count", "next_attempt_at", "last_attempt_at"])
    return delivery, delivery.attempt_count


def webhook_delivery_attempt(
    *,
    delivery_id: Any,
    now: datetime | None = None,
    post: Post = client.post,
    rng: Callable[[], float] = random.random,
) -> WebhookAttempt | None:
    """Send one due delivery once and record the attempt; None when it is not due (already sent,
    claimed by another attempt, waiting for its next try). ``now`` is the clock every rule reads."""
    now = now or timezone.now()
    claimed = _claim(delivery_id, now)
    if claimed is None:
        return None
    delivery, number = claimed
    endpoint = delivery.endpoint
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = signing.sign_headers(
        secrets=endpoint_secrets(endpoint=endpoint, now=now),
        msg_id=delivery.event_id,
        timestamp=int(now.timestamp()),
        body=body,
    )
    headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
    status_code: int | None = None
    excerpt = error = ""
    latency_ms = 0.0
    try:
        response = post(
            endpoint.url,
            body=body,
            headers=headers,
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            allowed_networks=_allowed_networks(),
        )
        status_code, latency_ms = response.status, response.elapsed_ms
        # The receiver's bytes are stored as text: NUL is the one character PostgreSQL refuses.
        excerpt = response.body.decode("utf-8", "replace").replace("\x00", "\ufffd")[:RESPONSE_EXCERPT_CHARS]
    except (ssrf.DestinationRefused, client.RequestFailed) as failure:
        error = str(failure).replace("\x00", "\ufffd")[:300]
        refused = isinstance(failure, ssrf.DestinationRefused)
    else:
        refused = False
    succeeded = status_code is not None and 200 <= status_code < 300
    attempt = _record(delivery.pk, number, now, status_code, succeeded, latency_ms, excerpt, error, rng)
    metrics.WEBHOOK_DELIVERIES.labels(outcome=_outcome(attempt, refused=refused)).inc()
    logger.info(
        "Webhook %s (%s) attempt %d to endpoint %s: %s",
        delivery.event_id,
        delivery.event_type,
        number,
        endpoint.pk,
        status_code if status_code is not None else error,
    )
    return attempt


def _record(
    delivery_id: Any,
    number: int,
    now: datetime,
    status_code: int | None,
    succeeded: bool,
    latency_ms: float,
    excerpt: str,
    error: str,
    rng: Callable[[], float],
) -> WebhookAttempt:
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=delivery.endpoint_id)
        attempt = WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            attempted_at=now,
            status_code=status_code,
            succeeded=succeeded,
            latency_ms=latency_ms,
            response_excerpt=excerpt,
            error=error,
        )
        if succeeded:
            delivery.status = WebhookDelivery.Status.SUCCEEDED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            if endpoint.failing_since is not None:
                endpoint.failing_since = None
                endpoint.save(update_fields=["failing_since"])
        else:
            if now >= delivery.retry_until:
                delivery.status = WebhookDelivery.Status.FAILED
                delivery.next_attempt_at = None
            else:
                delivery.next_attempt_at = min(now + retry_delay(number, rng=rng), delivery.retry_until)
            if endpoint.failing_since is None:
                endpoint.failing_since = now
                endpoint.save(update_fields=["failing_since"])
            elif endpoint.enabled and now - endpoint.failing_since >= DISABLE_AFTER:
                _disable(endpoint)
                delivery.status = WebhookDelivery.Status.FAILED
                delivery.next_attempt_at = None
        delivery.save(update_fields=["status", "delivered_at", "next_attempt_at"])
    return attempt


def _outcome(attempt: WebhookAttempt, *, refused: bool) -> str:
    """The attempt as callmissed_webhook_deliveries_total counts it."""
    delivery = attempt.delivery
    if attempt.succeeded:
        return "delivered"
    if not delivery.endpoint.enabled:
        return "disabled"
    if refused:
        return "refused"
    return "exhausted" if delivery.status == WebhookDelivery.Status.FAILED else "failed"


def _disable(endpoint: WebhookEndpoint) -> None:
    """Stop calling an endpoint that failed every attempt for DISABLE_AFTER, and tell the
    organization: an audit row, the dashboard's banner (the disabled endpoint) and an email to
    its owners and admins."""
    hours = int(DISABLE_AFTER.total_seconds() // 3600)
    endpoint.enabled = False
    since = f"{endpoint.failing_since:%Y-%m-%d %H:%M} UTC"
    endpoint.disabled_reason = f"Every delivery failed for {hours} hours (since {since})."
    endpoint.save(update_fields=["enabled", "disabled_reason"])
    WebhookDelivery.objects.filter(endpoint=endpoint, status=WebhookDelivery.Status.PENDING).update(
        status=WebhookDelivery.Status.FAILED, next_attempt_at=None
    )
    _audit(endpoint, AuditLog.Action.WEBHOOK_DISABLED, None, reason=endpoint.disabled_reason)
    recipients = list(
        Membership.objects.filter(
            organization_id=endpoint.organization_id, role__in=(Membership.Role.OWNER, Membership.Role.ADMIN)
        )
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )
    if recipients:
        subject = "A webhook endpoint was disabled"
        message = (
            f"Deliveries to {endpoint.url} failed for {hours} hours, so CallMissed stopped sending to it.\n"
            f"{endpoint.disabled_reason}\n\nFix the receiver, enable the endpoint again from the dashboard's "
            "Webhooks page or with PATCH /v1/webhooks/{id} and redeliver the events you need."
        )
        transaction.on_commit(lambda: send_mail(subject, message, None, recipients, fail_silently=True), robust=True)
    logger.warning("Disabled webhook endpoint %s after %d hours of failures", endpoint.pk, hours)


def webhook_deliveries_queue_due(*, now: datetime | None = None, limit: int = 500) -> int:
    """Queue the deliveries whose next attempt is due (retries, and first attempts whose task was
    lost). Returns how many were queued."""
    from webhooks import tasks  # tasks import this module

    now = now or timezone.now()
    due = (
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    queued = 0
    for delivery_id in due:
        if queueing.enqueue(tasks.deliver, delivery_id=str(delivery_id)):
            queued += 1
    return queued


@transaction.atomic
def webhook_delivery_redeliver(*, delivery: WebhookDelivery, now: datetime | None = None) -> WebhookDelivery:
    """Send a delivery again now, with the same ``webhook-id`` (receivers dedupe on it): one more
    attempt whatever its earlier outcome; one still inside its retry window keeps its retries."""
    now = now or timezone.now()
    locked = WebhookDelivery.objects.select_for_update(of=("self",)).select_related("endpoint").get(pk=delivery.pk)
    if not locked.endpoint.enabled:
        raise Conflict("The endpoint is disabled; enable it before redelivering.")
    # Claimed within the lease and not yet recorded: another task is sending it right now.
    in_flight = (
        locked.status == WebhookDelivery.Status.PENDING
        and locked.last_attempt_at is not None
        and locked.last_attempt_at > now - ATTEMPT_LEASE
        and not WebhookAttempt.objects.filter(delivery=locked, number=locked.attempt_count).exists()
    )
    if in_flight:
        # Another task holds this delivery's lease: redelivering now would send it twice at once.
        raise Conflict("An attempt of this delivery is in progress; try again when it is recorded.")
    locked.status = WebhookDelivery.Status.PENDING
    locked.next_attempt_at = now
    locked.retry_until = max(locked.retry_until, now)
    locked.save(update_fields=["status", "next_attempt_at", "retry_until"])
    _queue(locked)
    return locked


def webhook_deliveries_prune(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Delete settled deliveries (and their attempts) older than WEBHOOK_DELIVERY_RETENTION_DAYS,
    in batches so no single statement holds many rows. Returns how many went."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    old = WebhookDelivery.objects.filter(created_at__lt=cutoff).exclude(status=WebhookDelivery.Status.PENDING)
    pruned = 0
    while True:
        ids = list(old.order_by("created_at").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return pruned
        WebhookDelivery.objects.filter(pk__in=ids).delete()
        pruned += len(ids)
