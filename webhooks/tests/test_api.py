"""/v1/webhooks: the secret is shown once, writes are audited, another organization's endpoints
are not found, and every refusal is the error envelope."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import AuditLog
from accounts.tests.factories import make_org
from callmissed.errors import Conflict
from testsupport.envelope import assert_envelope
from testsupport.fakes.webhook_receiver import WebhookReceiver
from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from webhooks.tests.support import emit

pytestmark = pytest.mark.django_db


def _create(api: Any, url: str, events: list[str] | None = None) -> Any:
    body = {"url": url, "event_types": events or ["session.ended", "session.failed"], "description": "CRM"}
    return api.post("/v1/webhooks", body, format="json")


def test_the_secret_is_in_the_create_answer_only(api: Any) -> None:
    created = _create(api, "https://hooks.example.com/callmissed")
    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    endpoint_id = created.json()["id"]
    listed = api.get("/v1/webhooks")
    one = api.get(f"/v1/webhooks/{endpoint_id}")
    assert [e["id"] for e in listed.json()] == [endpoint_id]
    for response in (listed, one):
        assert response.status_code == 200
        assert secret not in response.content.decode() and "secret" not in str(response.json()).replace(
            "previous_secret_expires_at", ""
        )
    assert AuditLog.objects.filter(action="webhook.created", target=endpoint_id).exists()


def test_rotation_answers_a_new_secret_and_the_overlap(api: Any) -> None:
    created = _create(api, "https://hooks.example.com/a").json()
    rotated = api.post(f"/v1/webhooks/{created['id']}/rotate-secret", {"overlap_seconds": 3600}, format="json")
    assert rotated.status_code == 201, rotated.content
    assert rotated.json()["secret"] not in (created["secret"], "")
    assert rotated.json()["previous_secret_expires_at"] is not None
    assert AuditLog.objects.filter(action="webhook.secret_rotated", target=created["id"]).exists()
    too_long = api.post(f"/v1/webhooks/{created['id']}/rotate-secret", {"overlap_seconds": 10**7}, format="json")
    assert_envelope(too_long, 400, "validation_error")
    assert "overlap_seconds" in too_long.json()["error"]["fields"]


def test_update_changes_url_events_and_enabled_and_delete_removes_it(api: Any) -> None:
    endpoint_id = _create(api, "https://hooks.example.com/a").json()["id"]
    changed = api.patch(
        f"/v1/webhooks/{endpoint_id}",
        {"url": "https://hooks.example.com/b", "event_types": ["billing.low_balance"], "enabled": False},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert (body["url"], body["event_types"], body["enabled"]) == (
        "https://hooks.example.com/b",
        ["billing.low_balance"],
        False,
    )
    assert api.delete(f"/v1/webhooks/{endpoint_id}").status_code == 204
    assert_envelope(api.get(f"/v1/webhooks/{endpoint_id}"), 404, "not_found")
    assert list(AuditLog.objects.filter(target=endpoint_id).values_list("action", flat=True).order_by("id")) == [
        "webhook.created",
        "webhook.updated",
        "webhook.deleted",
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://hooks.example.com/", "event_types": ["session.exploded"]}, "event_types"),
        ({"url": "https://hooks.example.com/", "event_types": []}, "event_types"),
        ({"url": "ftp://hooks.example.com/", "event_types": ["session.ended"]}, "url"),
        ({"url": "http://169.254.169.254/latest/", "event_types": ["session.ended"]}, "url"),
        ({"url": "http://10.0.0.7/hook", "event_types": ["session.ended"]}, "url"),
        ({"url": "http://[::ffff:127.0.0.1]/hook", "event_types": ["session.ended"]}, "url"),
        ({"url": "http://localhost:8000/hook", "event_types": ["session.ended"]}, "url"),
        ({"url": "https://hooks.example.com/", "event_types": ["session.ended"], "secret": "whsec_x"}, "secret"),
        # JSON types are kept, not coerced: a number is not a URL, a string is not a list.
        ({"url": 5, "event_types": ["session.ended"]}, "url"),
        ({"url": "https://hooks.example.com/", "event_types": "session.ended"}, "event_types"),
        ({"url": "https://hooks.example.com/", "event_types": ["session.ended"], "description": 7}, "description"),
    ],
)
def test_bad_input_names_the_field(api: Any, body: dict[str, Any], field: str) -> None:
    response = api.post("/v1/webhooks", body, format="json")
    assert_envelope(response, 400, "validation_error")
    assert field in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("path", "method", "body", "field"),
    [
        ("", "patch", {"enabled": "yes"}, "enabled"),
        ("/rotate-secret", "post", {"overlap_seconds": "300"}, "overlap_seconds"),
    ],
)
def test_updates_take_json_types_not_coerced_strings(
    api: Any, path: str, method: str, body: dict[str, Any], field: str
) -> None:
    created = api.post(
        "/v1/webhooks", {"url": "https://hooks.example.com/", "event_types": ["session.ended"]}, format="json"
    )
    response = getattr(api, method)(f"/v1/webhooks/{created.json()['id']}{path}", body, format="json")
    assert_envelope(response, 400, "validation_error")
    assert field in response.json()["error"]["fields"]


def test_another_organizations_endpoint_and_deliveries_are_not_found(api: Any, make_client: Any) -> None:
    other = make_client()
    endpoint = services.webhook_endpoint_create(
        organization=other.org, url="https://hooks.other.example/", event_types=["session.started"]
    ).endpoint
    delivery = emit(other.org)
    base = f"/v1/webhooks/{endpoint.pk}"
    for response in (
        api.get(base),
        api.patch(base, {"enabled": False}, format="json"),
        api.delete(base),
        api.post(f"{base}/rotate-secret", {}, format="json"),
        api.get(f"{base}/deliveries"),
        api.post(f"{base}/deliveries/{delivery.pk}/redeliver"),
        api.get("/v1/webhooks/not-a-uuid"),
    ):
        assert_envelope(response, 404, "not_found")
    assert api.get("/v1/webhooks").json() == []
    endpoint.refresh_from_db()
    assert endpoint.enabled
    # And a delivery of another endpoint, through one's own endpoint id, is not found either.
    own = _create(api, "https://hooks.example.com/mine").json()["id"]
    assert_envelope(api.post(f"/v1/webhooks/{own}/deliveries/{delivery.pk}/redeliver"), 404, "not_found")


def test_deliveries_list_attempts_and_redeliver_sends_again(
    api: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with WebhookReceiver(script=[500]) as receiver:
        endpoint_id = _create(api, receiver.url(), events=["session.started"]).json()["id"]
        delivery = emit(api.org)
        services.webhook_delivery_attempt(delivery_id=delivery.pk, now=timezone.now())
        listed = api.get(f"/v1/webhooks/{endpoint_id}/deliveries")
        assert listed.status_code == 200
        (row,) = listed.json()["results"]
        assert (row["event_id"], row["status"], row["attempt_count"]) == (delivery.event_id, "pending", 1)
        (attempt,) = row["attempts"]
        assert (attempt["status_code"], attempt["succeeded"]) == (500, False)
        assert attempt["response_excerpt"] == "receiver failing on purpose"
        with django_capture_on_commit_callbacks(execute=True):
            redelivered = api.post(f"/v1/webhooks/{endpoint_id}/deliveries/{delivery.pk}/redeliver")
        assert redelivered.status_code == 202, redelivered.content
        assert len(receiver.received) == 2
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    failed_only = api.get(f"/v1/webhooks/{endpoint_id}/deliveries?status=failed")
    assert failed_only.json()["results"] == []


def test_redelivering_to_a_disabled_endpoint_is_a_conflict(api: Any) -> None:
    endpoint_id = _create(api, "https://hooks.example.com/a", events=["session.started"]).json()["id"]
    delivery = emit(api.org)
    api.patch(f"/v1/webhooks/{endpoint_id}", {"enabled": False}, format="json")
    assert_envelope(api.post(f"/v1/webhooks/{endpoint_id}/deliveries/{delivery.pk}/redeliver"), 409, "conflict")


def test_the_deliveries_list_costs_the_same_queries_for_one_delivery_or_twenty(
    api: Any, django_assert_max_num_queries: Any
) -> None:
    endpoint = services.webhook_endpoint_create(
        organization=api.org, url="https://hooks.example.com/", event_types=["session.started"]
    ).endpoint
    for n in range(20):
        delivery = emit(api.org, source=f"s{n}")
        for number in (1, 2):
            WebhookAttempt.objects.create(
                delivery=delivery,
                number=number,
                attempted_at=timezone.now(),
                status_code=500,
                succeeded=False,
                latency_ms=3.0,
            )
    # Key lookup and touch, the endpoint, the page, its attempts (one query for all).
    with django_assert_max_num_queries(5):
        response = api.get(f"/v1/webhooks/{endpoint.pk}/deliveries?limit=20")
    assert response.status_code == 200
    assert [len(row["attempts"]) for row in response.json()["results"]] == [2] * 20


def test_an_organization_has_a_bounded_number_of_endpoints(api: Any, settings: Any) -> None:
    """Every event fans out to every endpoint: an unbounded list multiplies our outbound calls."""
    settings.WEBHOOK_MAX_ENDPOINTS = 2
    first = _create(api, "https://hooks.example.com/1").json()["id"]
    assert _create(api, "https://hooks.example.com/2").status_code == 201
    refused = _create(api, "https://hooks.example.com/3")
    assert_envelope(refused, 409, "conflict")
    assert "at most 2" in refused.json()["error"]["message"]
    assert api.delete(f"/v1/webhooks/{first}").status_code == 204
    assert _create(api, "https://hooks.example.com/3").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_cannot_pass_the_cap_together(settings: Any) -> None:
    settings.WEBHOOK_MAX_ENDPOINTS = 3
    org = make_org()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            services.webhook_endpoint_create(
                organization=org, url=f"https://hooks.example.com/{n}", event_types=["session.ended"]
            )
            outcomes.append("created")
        except Conflict:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert WebhookEndpoint.objects.filter(organization=org).count() == 3
