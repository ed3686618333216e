"""What a customer reads on the overview, sessions, session and billing pages, and the error pages."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import AuditLog, Membership
from agent_worker import contracts
from billing.models import BillingAccount
from billing.tests.support import KIMI_TURN, apply_usage, usage_event
from dashboard.tests.test_dashboard import PASSWORD, _org_of, _signup
from voice.models import VoiceSession
from voice.tests.factories import TranscriptSegmentFactory, VoiceSessionFactory

pytestmark = pytest.mark.django_db

C = contracts.UsageComponent


@pytest.fixture
def owner(client: Client) -> Client:
    assert _signup(client).status_code == 302
    return client


def _json_script(html: str, element_id: str) -> Any:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    assert match, f"no #{element_id} data on the page"
    return json.loads(match.group(1))


def _session(**fields: Any) -> VoiceSession:
    return VoiceSessionFactory.create(organization=_org_of("asha"), **fields)


# ---------------------------------------------------------------------------------------- overview


def test_the_overview_chart_stacks_each_days_cost_by_component(owner: Client) -> None:
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    session = _session()
    apply_usage(usage_event(session, *KIMI_TURN, at=today))
    apply_usage(usage_event(session, (C.TTS_CHARACTERS, "bulbul:v3", 1000), at=today - timedelta(days=2)))
    apply_usage(usage_event(session, (C.TTS_CHARACTERS, "bulbul:v3", 1000), at=today - timedelta(days=40)))

    html = owner.get("/dashboard/").content.decode()
    chart = _json_script(html, "usage-chart-data")
    assert len(chart["labels"]) == 30 and chart["labels"][-1] == today.date().isoformat()
    by_label = {d["label"]: d["data"] for d in chart["datasets"]}
    assert set(by_label) == {
        "Speech recognition (seconds)",
        "Speech synthesis (characters)",
        "Language model input (tokens)",
        "Language model output (tokens)",
    }
    tts = by_label["Speech synthesis (characters)"]
    assert tts[-1] == pytest.approx(0.041462, abs=1e-6) and tts[-3] > 0  # today's and two days ago
    assert sum(1 for value in tts if value) == 2  # forty days ago is outside the default 30 days

    ninety = _json_script(owner.get("/dashboard/?days=90&by=model").content.decode(), "usage-chart-data")
    assert len(ninety["labels"]) == 90
    models = {d["label"]: d["data"] for d in ninety["datasets"]}
    assert set(models) == {"saaras:v3", "bulbul:v3", "kimi-k2.5"}
    assert sum(1 for value in models["bulbul:v3"] if value) == 3


def test_the_overview_shows_balance_spend_against_the_cap_and_live_sessions(owner: Client) -> None:
    account = BillingAccount.objects.get(organization=_org_of("asha"))
    BillingAccount.objects.filter(pk=account.pk).update(spend_cap_monthly=Decimal("20"))
    apply_usage(usage_event(_session(status=VoiceSession.Status.ACTIVE), *KIMI_TURN))
    html = owner.get("/dashboard/").content.decode()
    assert "4.951282" in html  # balance
    assert "0.048718" in html and "of a 20.000000 cap" in html
    assert re.search(r'<meter min="0" max="20\.000000" value="0\.048718"', html)
    live = re.search(r'data-testid="live"><span class="figure">(\d+)</span>', html)
    assert live and live.group(1) == "1"


def test_a_nonsense_range_falls_back_to_thirty_days(owner: Client) -> None:
    response = owner.get("/dashboard/?days=100000&by=drop+table")
    assert response.status_code == 200
    assert len(_json_script(response.content.decode(), "usage-chart-data")["labels"]) == 30


# ---------------------------------------------------------------------------------------- sessions


def test_the_sessions_list_shows_cost_duration_transport_and_end_reason(owner: Client) -> None:
    session = _session(
        status=VoiceSession.Status.ENDED, end_reason="max_duration", duration_seconds=42.3, transport="websocket"
    )
    apply_usage(usage_event(session, *KIMI_TURN))
    unused = _session()
    html = owner.get("/dashboard/sessions/").content.decode()
    row = re.search(rf'<tr data-session="{session.id}">(.*?)</tr>', html, re.S)
    assert row, html
    cells = re.sub(r"<[^>]+>", "|", row.group(1))
    for shown in ("Ended", "max duration", "websocket", "42.3 s", "0.048718"):
        assert shown in cells
    blank = re.search(rf'<tr data-session="{unused.id}">(.*?)</tr>', html, re.S)
    assert blank and 'data-testid="cost">—' in blank.group(1)


def _listed(client: Client, query: str) -> set[str]:
    html = client.get(f"/dashboard/sessions/?{query}").content.decode()
    return set(re.findall(r'<tr data-session="([0-9a-f-]+)">', html))


def test_sessions_filter_by_date_transport_metadata_and_id(owner: Client) -> None:
    old = _session(transport="websocket", metadata={"ticket": "T-1", "plan": 2})
    VoiceSession.objects.filter(pk=old.pk).update(created_at=datetime(2026, 1, 10, 23, 30, tzinfo=UTC))
    new = _session(transport="livekit", metadata={"ticket": "T-2"})
    ids = {str(old.id), str(new.id)}

    assert _listed(owner, "") == ids
    assert _listed(owner, "created_from=2026-01-10&created_to=2026-01-10") == {str(old.id)}
    assert _listed(owner, "created_from=2026-01-11") == {str(new.id)}
    assert _listed(owner, "transport=websocket") == {str(old.id)}
    assert _listed(owner, "metadata_key=ticket&metadata_value=T-2") == {str(new.id)}
    assert _listed(owner, "metadata_key=plan&metadata_value=2") == {str(old.id)}  # typed values match their text
    assert _listed(owner, f"session_id={str(new.id)[:8].upper()}") == {str(new.id)}
    assert _listed(owner, f"session_id={new.id}&transport=websocket") == set()


def test_an_invalid_filter_is_explained_and_not_applied(owner: Client) -> None:
    _session()
    response = owner.get("/dashboard/sessions/?created_from=yesterday&metadata_key=a%20b&session_id=xyz")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Enter a valid date." in html
    assert "Letters, digits" in html and "A session id, or its first characters" in html


def test_the_pager_keeps_the_filters(owner: Client) -> None:
    for _ in range(26):
        _session(transport="websocket")
    html = owner.get("/dashboard/sessions/?transport=websocket").content.decode()
    assert 'href="?transport=websocket&amp;page=2"' in html


# ---------------------------------------------------------------------------------------- one session


def test_the_session_page_shows_config_metadata_latency_and_named_costs(owner: Client) -> None:
    session = _session(
        system_prompt="You book tables at Meera's.",
        voice="priya",
        language="hi-IN",
        llm_model="kimi-k2.5",
        metadata={"ticket": "T-9"},
        turn_latencies=[
            {"end_of_speech_to_first_audio_ms": 820.0, "llm_ttft_ms": 310.0, "tts_ttfb_ms": 140.0},
            {"end_of_speech_to_first_audio_ms": 640.0, "llm_ttft_ms": 250.0, "tts_ttfb_ms": None},
        ],
    )
    TranscriptSegmentFactory.create(session=session, role="agent", text="Namaste!")
    apply_usage(usage_event(session, *KIMI_TURN))
    html = owner.get(f"/dashboard/sessions/{session.id}/").content.decode()
    for shown in ("You book tables at Meera&#x27;s.", "priya", "hi-IN", "kimi-k2.5", "T-9", "Namaste!"):
        assert shown in html
    assert "Speech recognition (seconds)" in html and "Language model output (tokens)" in html
    assert "stt_seconds" not in html
    chart = _json_script(html, "latency-chart-data")
    assert chart["labels"] == ["Turn 1", "Turn 2"]
    series = {d["key"]: d["data"] for d in chart["datasets"]}
    assert series["end_of_speech_to_first_audio_ms"] == [820.0, 640.0]
    assert series["tts_ttfb_ms"] == [140.0, None]


# ---------------------------------------------------------------------------------------- billing


def test_billing_leaks_no_server_configuration(owner: Client) -> None:
    html = owner.get("/dashboard/billing/").content.decode()
    assert "STRIPE" not in html.upper().replace("PAY WITH STRIPE", "")
    assert "not available" in html


def test_an_owner_sets_and_clears_the_monthly_spend_cap_and_each_change_is_audited(owner: Client) -> None:
    org = _org_of("asha")
    response = owner.post("/dashboard/billing/spend-cap/", {"spend_cap_monthly": "25.50"})
    assert response.status_code == 302
    assert BillingAccount.objects.get(organization=org).spend_cap_monthly == Decimal("25.50")
    assert "25.500000" in owner.get("/dashboard/billing/").content.decode()

    assert owner.post("/dashboard/billing/spend-cap/", {"spend_cap_monthly": ""}).status_code == 302
    assert BillingAccount.objects.get(organization=org).spend_cap_monthly is None
    changes = AuditLog.objects.filter(organization=org, action=AuditLog.Action.LIMITS_CHANGED).order_by("created_at")
    steps = [[v if v is None else Decimal(v) for v in c.detail["spend_cap_monthly"]] for c in changes]
    assert steps == [[None, Decimal("25.50")], [Decimal("25.50"), None]]
    assert {c.actor.username for c in changes if c.actor} == {"asha"}


def test_a_bad_cap_is_refused_with_the_reason(owner: Client) -> None:
    response = owner.post("/dashboard/billing/spend-cap/", {"spend_cap_monthly": "-3"})
    assert response.status_code == 400
    assert "greater than or equal to 1" in response.content.decode()
    assert BillingAccount.objects.get(organization=_org_of("asha")).spend_cap_monthly is None


def test_a_member_who_is_not_an_owner_cannot_change_the_cap(owner: Client) -> None:
    org = _org_of("asha")
    member = User.objects.create_user(username="ravi", password=PASSWORD)
    Membership.objects.create(user=member, organization=org, role=Membership.Role.MEMBER)
    client = Client()
    client.login(username="ravi", password=PASSWORD)
    assert "Only an owner" in client.get("/dashboard/billing/").content.decode()
    response = client.post("/dashboard/billing/spend-cap/", {"spend_cap_monthly": "1000"}, HTTP_ACCEPT="text/html")
    assert response.status_code == 403
    assert BillingAccount.objects.get(organization=org).spend_cap_monthly is None


# ---------------------------------------------------------------------------------------- errors, icon


def test_with_debug_on_a_missing_page_is_the_products_404(owner: Client, settings: Any) -> None:
    settings.DEBUG = True
    for path in ("/dashboard/no-such-page/", f"/dashboard/sessions/{uuid.uuid4()}/"):
        response = owner.get(path, HTTP_ACCEPT="text/html")
        html = response.content.decode()
        assert response.status_code == 404 and "Not found." in html
        assert "URLconf" not in html and "Traceback" not in html and "DEBUG = True" not in html
        # Our page, through the policy's middleware (which only reports, not enforces, under DEBUG).
        assert "Content-Security-Policy" in response or "Content-Security-Policy-Report-Only" in response


def test_with_debug_on_a_crash_is_the_products_500(owner: Client, settings: Any, monkeypatch: Any) -> None:
    from voice import selectors

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    settings.DEBUG = True
    monkeypatch.setattr(selectors, "voice_session_list", broken)
    owner.raise_request_exception = False
    response = owner.get("/dashboard/sessions/", HTTP_ACCEPT="text/html")
    html = response.content.decode()
    assert response.status_code == 500 and "Internal server error." in html
    assert "a bug" not in html and "Traceback" not in html


def test_every_page_names_a_favicon_that_exists(owner: Client) -> None:
    html = owner.get("/dashboard/").content.decode()
    icon = re.search(r'<link rel="icon" href="([^"]+)"', html)
    assert icon
    redirect = Client().get("/favicon.ico")
    assert redirect.status_code == 301 and redirect["Location"] == icon.group(1)


def test_the_sessions_page_costs_the_same_queries_for_three_sessions_or_twenty(owner: Client) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert owner.get("/dashboard/sessions/").status_code == 200
        return len(captured)

    for _ in range(3):
        apply_usage(usage_event(_session(), *KIMI_TURN))
    few = queries()
    for _ in range(17):
        apply_usage(usage_event(_session(), *KIMI_TURN))
    assert queries() == few
