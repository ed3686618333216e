"""The playground's page and the two credentials it asks the dashboard for (session cookie + CSRF)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts import services as account_services
from accounts.models import Membership, SocketTicket
from accounts.tests.factories import make_org
from accounts.ws_auth import ws_key_authenticate
from testsupport.envelope import assert_envelope
from voice.models import VoiceSession

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def member() -> User:
    user = User.objects.create_user("ravi", "ravi@example.com", PASSWORD)
    Membership.objects.create(user=user, organization=make_org(name="Ravi Dental"), role=Membership.Role.OWNER)
    return user


@pytest.fixture
def browser(member: User) -> Client:
    """A logged-in browser that, like a real one, must send the CSRF token it was given."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    client.get("/dashboard/playground/")
    return client


def _post(client: Client, path: str, body: dict[str, Any] | None = None, *, csrf: bool = True) -> Any:
    headers = {"X-CSRFToken": client.cookies["csrftoken"].value} if csrf else {}
    return client.post(path, body or {}, content_type="application/json", headers=headers)


def test_the_page_lets_the_browser_reach_our_socket_and_livekit_only(browser: Client, settings: Any) -> None:
    response = browser.get("/dashboard/playground/")

    assert response.status_code == 200
    assert b'href="/dashboard/playground/"' in response.content  # the nav link
    policy = dict(part.split(" ", 1) for part in response["Content-Security-Policy"].split("; "))
    assert policy["connect-src"] == "'self' ws://testserver ws://localhost:7880 http://localhost:7880"
    assert settings.LIVEKIT_URL == "ws://localhost:7880"
    assert b"cm_" not in response.content  # no API key in the page


def test_other_pages_keep_the_default_policy(browser: Client) -> None:
    assert "connect-src" not in browser.get("/dashboard/keys/")["Content-Security-Policy"]


def test_a_ticket_is_minted_for_the_logged_in_user_and_opens_one_socket(browser: Client, member: User) -> None:
    response = _post(browser, "/dashboard/playground/ticket")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["ws_path"] == "/ws/voice-agent" and body["ticket"].startswith("cmt_")
    auth = ws_key_authenticate(query_string=f"ticket={body['ticket']}".encode())
    assert auth.ok and auth.organization == Membership.objects.get(user=member).organization


def test_minting_needs_the_csrf_token(browser: Client) -> None:
    assert_envelope(_post(browser, "/dashboard/playground/ticket", csrf=False), 403, "permission_denied")
    assert not SocketTicket.objects.exists()


def test_minting_needs_a_login() -> None:
    assert_envelope(Client().post("/dashboard/playground/ticket"), 403, "unauthenticated")


def test_an_api_key_cannot_mint_a_ticket(browser: Client, member: User) -> None:
    key = account_services.api_key_create(organization=Membership.objects.get(user=member).organization)
    response = Client().post("/dashboard/playground/ticket", HTTP_AUTHORIZATION=f"Bearer {key.plaintext}")

    assert_envelope(response, 403, "unauthenticated")


def test_a_user_without_an_organization_gets_no_ticket() -> None:
    loner = User.objects.create_user("loner", "loner@example.com", PASSWORD)
    client = Client()
    client.force_login(loner)

    assert_envelope(client.post("/dashboard/playground/ticket"), 403, "permission_denied")


def test_the_livekit_mode_creates_an_ordinary_session_for_the_organization(browser: Client, member: User) -> None:
    response = _post(browser, "/dashboard/playground/session", {"voice": "priya", "language": "hi-IN"})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["ws_url"] == "ws://localhost:7880" and body["token"] and body["status"] == "created"
    row = VoiceSession.objects.get(pk=body["id"])
    assert (row.organization, row.transport, row.voice, row.api_key) == (
        Membership.objects.get(user=member).organization,
        "livekit",
        "priya",
        None,
    )


def test_the_livekit_mode_validates_the_config_as_the_api_does(browser: Client) -> None:
    response = _post(browser, "/dashboard/playground/session", {"voice": "nobody"})

    error = assert_envelope(response, 400, "validation_error")
    assert "voice" in error["fields"]
    assert not VoiceSession.objects.exists()
