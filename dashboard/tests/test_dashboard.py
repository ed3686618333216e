from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership
from accounts.tests.factories import make_key, make_org
from voice.models import VoiceSession
from voice.tests.factories import TranscriptSegmentFactory, VoiceSessionFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"
KEY_RE = re.compile(r"cm_[A-Za-z0-9_\-]{20,}")


def _signup(client: Client, username: str = "asha", org: str = "Asha Labs") -> Any:
    return client.post(
        "/signup/",
        {
            "username": username,
            "email": f"{username}@example.com",
            "organization_name": org,
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )


@pytest.fixture
def owner(client: Client) -> Client:
    response = _signup(client)
    assert response.status_code == 302, response.content
    return client


def _org_of(username: str) -> Any:
    return Membership.objects.get(user__username=username).organization


def _create_key(client: Client, name: str = "backend") -> str:
    response = client.post("/dashboard/keys/", {"name": name, "lifetime_days": ""})
    assert response.status_code == 200
    match = KEY_RE.search(response.content.decode())
    assert match, "the new key is shown on the page"
    return match.group(0)


def test_pages_need_a_login(client: Client) -> None:
    for path in ("/dashboard/", "/dashboard/keys/", "/dashboard/sessions/", "/dashboard/billing/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


def test_signup_creates_the_user_their_organization_and_owner_membership(client: Client) -> None:
    response = _signup(client)
    assert response.status_code == 302 and response["Location"] == "/dashboard/keys/"
    membership = Membership.objects.select_related("organization").get(user__username="asha")
    assert membership.role == Membership.Role.OWNER
    assert membership.organization.name == "Asha Labs"
    assert "Asha Labs" in client.get("/dashboard/").content.decode()


def test_signup_rejects_taken_names_and_weak_passwords(client: Client, owner: Client) -> None:
    other = Client()
    response = _signup(other, username="ravi", org="asha labs")
    assert response.status_code == 200
    assert "That organization name is taken." in response.content.decode()
    response = other.post(
        "/signup/",
        {"username": "ravi", "email": "r@example.com", "organization_name": "R", "password1": "1", "password2": "1"},
    )
    assert response.status_code == 200
    assert not User.objects.filter(username="ravi").exists()


def test_a_new_key_is_shown_once_and_works_against_the_api(owner: Client, livekit_server: Any) -> None:
    plaintext = _create_key(owner)
    key = ApiKey.objects.get(prefix=plaintext[:10])
    assert key.hashed_secret != plaintext and plaintext not in str(ApiKey.objects.values().get(pk=key.pk))

    listing = owner.get("/dashboard/keys/")
    assert "no-cache" in listing["Cache-Control"] or "no-store" in listing["Cache-Control"]
    html = listing.content.decode()
    assert plaintext not in html
    assert f"{key.prefix}…{key.last4}" in html

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    created = api.post("/v1/voice/sessions", {"voice": "shubh"}, format="json")
    assert created.status_code == 201, created.content
    sessions_page = owner.get("/dashboard/sessions/").content.decode()
    assert created.json()["id"][:8] in sessions_page


def test_revoking_a_key_stops_it_at_once(owner: Client) -> None:
    plaintext = _create_key(owner)
    key = ApiKey.objects.get(prefix=plaintext[:10])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert api.get("/v1/voice/sessions").status_code == 200

    response = owner.post(f"/dashboard/keys/{key.id}/revoke/")
    assert response.status_code == 302
    denied = api.get("/v1/voice/sessions")
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "revoked_api_key"
    assert "revoked" in owner.get("/dashboard/keys/").content.decode()


def test_revoke_needs_post(owner: Client) -> None:
    plaintext = _create_key(owner)
    key = ApiKey.objects.get(prefix=plaintext[:10])
    assert owner.get(f"/dashboard/keys/{key.id}/revoke/").status_code == 405
    key.refresh_from_db()
    assert key.revoked_at is None


def test_another_organizations_keys_and_sessions_are_not_found(owner: Client) -> None:
    stranger = make_org(name="Stranger Co")
    their_key = make_key(stranger).api_key
    their_session = VoiceSessionFactory.create(organization=stranger)
    TranscriptSegmentFactory.create(session=their_session, text="their private words")

    assert owner.post(f"/dashboard/keys/{their_key.id}/revoke/", HTTP_ACCEPT="text/html").status_code == 404
    their_key.refresh_from_db()
    assert their_key.revoked_at is None
    assert owner.get(f"/dashboard/sessions/{their_session.id}/", HTTP_ACCEPT="text/html").status_code == 404
    listing = owner.get("/dashboard/sessions/").content.decode()
    assert str(their_session.id)[:8] not in listing
    assert f"{their_key.prefix}" not in owner.get("/dashboard/keys/").content.decode()


def test_session_detail_shows_the_transcript_in_order(owner: Client) -> None:
    session = VoiceSessionFactory.create(organization=_org_of("asha"), llm_model="sarvam-105b")
    segment = TranscriptSegmentFactory.create
    segment(session=session, role="agent", text="Namaste!", start_offset_ms=0, end_offset_ms=900)
    segment(session=session, role="user", text="Hello", start_offset_ms=1500, end_offset_ms=2000)
    html = owner.get(f"/dashboard/sessions/{session.id}/").content.decode()
    assert "sarvam-105b" in html
    assert html.index("Namaste!") < html.index("Hello")


def test_session_detail_shows_tool_calls_with_arguments_result_and_latency(owner: Client) -> None:
    session = VoiceSessionFactory.create(organization=_org_of("asha"))
    call = {"name": "lookup_order", "call_id": "c1", "arguments": '{"order_id": "A-17"}', "result": "shipped"}
    TranscriptSegmentFactory.create(
        session=session,
        role="tool",
        text="lookup_order",
        start_offset_ms=100,
        end_offset_ms=184,
        tool_call={**call, "is_error": True, "latency_ms": 84.2},
    )
    html = owner.get(f"/dashboard/sessions/{session.id}/").content.decode()
    assert "Tool call" in html
    assert "lookup_order({&quot;order_id&quot;: &quot;A-17&quot;})" in html
    assert "error: <code>shipped</code>" in html and "84 ms" in html


def test_sessions_filter_by_status(owner: Client) -> None:
    org = _org_of("asha")
    ended = VoiceSessionFactory.create(organization=org, status=VoiceSession.Status.ENDED)
    live = VoiceSessionFactory.create(organization=org)
    html = owner.get("/dashboard/sessions/?status=ended").content.decode()
    assert str(ended.id)[:8] in html and str(live.id)[:8] not in html


def test_a_login_without_an_organization_is_told_so(client: Client) -> None:
    User.objects.create_user(username="loner", password=PASSWORD)
    client.login(username="loner", password=PASSWORD)
    response = client.get("/dashboard/")
    assert response.status_code == 403
    assert "No organization yet" in response.content.decode()


def test_html_pages_get_html_errors_and_the_api_gets_the_envelope(owner: Client) -> None:
    page = owner.get(f"/dashboard/sessions/{uuid.uuid4()}/", HTTP_ACCEPT="text/html")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    api = owner.get("/v1/no-such-thing", HTTP_ACCEPT="text/html")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"


def test_billing_shows_balance_history_and_session_cost(owner: Client) -> None:
    from billing.tests.support import KIMI_TURN, apply_usage, usage_event

    session = VoiceSessionFactory.create(organization=_org_of("asha"))
    apply_usage(usage_event(session, *KIMI_TURN))

    page = owner.get("/dashboard/billing/").content.decode()
    assert "4.951282 USD" in page  # 5.00 signup credit − 0.0487184
    assert "Signup credit" in page and "-0.048718" in page  # the ledger: the grant and the usage
    assert "Pay with Stripe" not in page  # no top-up form without Stripe

    detail = owner.get(f"/dashboard/sessions/{session.id}/").content.decode()
    assert "0.048718" in detail and "kimi-k2.5" in detail
    assert "4.951282" in owner.get("/dashboard/").content.decode()


def test_top_up_sends_the_user_to_stripe_checkout(owner: Client, settings: Any) -> None:
    from testsupport.fakes.stripe_api import FakeStripe

    with FakeStripe(api_key="sk_test_dash") as stripe:
        settings.STRIPE_SECRET_KEY = "sk_test_dash"
        settings.STRIPE_API_BASE = stripe.api_base
        too_small = owner.post("/dashboard/billing/", {"amount_usd": "1"})
        assert too_small.status_code == 200 and not stripe.checkout_sessions
        response = owner.post("/dashboard/billing/", {"amount_usd": "25"})
        assert response.status_code == 302
        (checkout,) = stripe.checkout_sessions.values()
        assert response["Location"] == checkout["url"]
        assert checkout["amount_total"] == 2500
        assert checkout["metadata"]["organization_id"] == str(_org_of("asha").pk)
