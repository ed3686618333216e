"""The Webhooks page: add an endpoint and see its secret once, rotate it, see deliveries with their
attempts, redeliver, and a banner when the platform disabled an endpoint."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Membership
from accounts.tests.factories import make_org
from testsupport.fakes.webhook_receiver import WebhookReceiver
from webhooks import services
from webhooks.models import WebhookEndpoint
from webhooks.tests.support import emit, endpoint_for

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/=]{40,}")


@pytest.fixture
def owner(client: Client) -> Client:
    response = client.post(
        "/signup/",
        {
            "username": "ravi",
            "email": "ravi@example.com",
            "organization_name": "Ravi Clinics",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    return client


def _org() -> Any:
    return Membership.objects.get(user__username="ravi").organization


def test_a_new_endpoint_shows_its_secret_once(owner: Client) -> None:
    response = owner.post(
        "/dashboard/webhooks/",
        {"url": "https://hooks.example.com/cm", "event_types": ["session.ended", "session.failed"]},
    )
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    (secret,) = SECRET_RE.findall(response.content.decode())
    endpoint = WebhookEndpoint.objects.get(organization=_org())
    assert endpoint.event_types == ["session.ended", "session.failed"]
    assert services.endpoint_secrets(endpoint=endpoint, now=timezone.now()) == [secret]
    for page in ("/dashboard/webhooks/", f"/dashboard/webhooks/{endpoint.pk}/"):
        assert secret not in owner.get(page).content.decode()


def test_a_private_url_is_refused_on_the_form(owner: Client) -> None:
    response = owner.post("/dashboard/webhooks/", {"url": "http://169.254.169.254/", "event_types": ["session.ended"]})
    assert response.status_code == 200
    assert "non-public" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_endpoint_cap_is_said_on_the_form(owner: Client, settings: Any) -> None:
    settings.WEBHOOK_MAX_ENDPOINTS = 1
    endpoint_for(_org(), "https://hooks.example.com/first")
    response = owner.post(
        "/dashboard/webhooks/", {"url": "https://hooks.example.com/2", "event_types": ["session.ended"]}
    )
    assert response.status_code == 200
    assert "at most 1 webhook endpoints" in response.content.decode()
    assert WebhookEndpoint.objects.filter(organization=_org()).count() == 1


def test_rotating_shows_the_new_secret_on_that_page_only(owner: Client) -> None:
    created = endpoint_for(_org(), "https://hooks.example.com/cm")
    response = owner.post(f"/dashboard/webhooks/{created.endpoint.pk}/rotate/")
    assert response.status_code == 200
    (secret,) = SECRET_RE.findall(response.content.decode())
    assert secret != created.secret
    assert len(services.endpoint_secrets(endpoint=WebhookEndpoint.objects.get(), now=timezone.now())) == 2


def test_deliveries_show_their_attempts_and_redeliver_sends_again(
    owner: Client, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with WebhookReceiver(script=[503]) as receiver:
        endpoint = endpoint_for(_org(), receiver.url()).endpoint
        delivery = emit(_org())
        services.webhook_delivery_attempt(delivery_id=delivery.pk, now=timezone.now())
        page = owner.get(f"/dashboard/webhooks/{endpoint.pk}/").content.decode()
        assert delivery.event_id in page and "HTTP 503" in page and "receiver failing on purpose" in page
        with django_capture_on_commit_callbacks(execute=True):
            response = owner.post(f"/dashboard/webhooks/{endpoint.pk}/deliveries/{delivery.pk}/redeliver/")
        assert response.status_code == 302
        assert len(receiver.received) == 2
    page = owner.get(f"/dashboard/webhooks/{endpoint.pk}/").content.decode()
    assert "HTTP 200" in page and "succeeded" in page


def test_a_disabled_endpoint_is_announced_on_the_overview_and_can_be_enabled_again(owner: Client) -> None:
    endpoint = endpoint_for(_org(), "https://hooks.example.com/cm").endpoint
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, failing_since=timezone.now(), disabled_reason="Every delivery failed for 24 hours."
    )
    overview = owner.get("/dashboard/")
    assert b'data-testid="webhook-disabled"' in overview.content and b"hooks.example.com/cm" in overview.content
    owner.post(f"/dashboard/webhooks/{endpoint.pk}/toggle/")
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is None
    assert b'data-testid="webhook-disabled"' not in owner.get("/dashboard/").content


def test_another_organizations_endpoint_is_a_404(owner: Client) -> None:
    other = endpoint_for(make_org(), "https://hooks.other.example/").endpoint
    assert owner.get(f"/dashboard/webhooks/{other.pk}/").status_code == 404
    assert owner.post(f"/dashboard/webhooks/{other.pk}/rotate/").status_code == 404
    assert owner.post(f"/dashboard/webhooks/{other.pk}/delete/").status_code == 404
    assert WebhookEndpoint.objects.filter(pk=other.pk).exists()
