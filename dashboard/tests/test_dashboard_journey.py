"""A customer's first session, end to end in headless Chromium: sign up, create a key and copy it,
create a session with it through the REST API, find it with its cost, filter, read its transcript and
latency chart, revoke the key, and see the API refuse it. The charts are checked on the data Chart.js
drew, and every page is screenshotted (into ``CALLMISSED_SCREENSHOTS`` when set: ``make screenshots``
writes docs/screenshots/)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent_worker import contracts
from billing.tests.support import apply_usage, usage_event
from dashboard.tests.test_csp_browser import Browser, browsing
from dashboard.tests.test_dashboard_browser import _api, sign_up
from voice import tasks
from voice.models import VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("seeded_prices", "livekit_server"),
]

PASSWORD = "a long and unguessable passphrase"
C = contracts.UsageComponent
LATENCIES = [
    {"end_of_speech_to_first_audio_ms": 910.0, "llm_ttft_ms": 420.0, "tts_ttfb_ms": 180.0},
    {"end_of_speech_to_first_audio_ms": 760.0, "llm_ttft_ms": 350.0, "tts_ttfb_ms": 150.0},
    {"end_of_speech_to_first_audio_ms": 820.0, "llm_ttft_ms": 390.0, "tts_ttfb_ms": 160.0},
]
CONVERSATION = [
    ("agent", "Namaste! Thanks for calling Meera's Kitchen. How can I help?"),
    ("user", "Can I book a table for two tomorrow at eight?"),
    ("agent", "Of course. A table for two tomorrow at 8 pm. May I have your name?"),
    ("user", "Asha."),
    ("agent", "Thank you, Asha. You're booked. See you tomorrow!"),
]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    # The copy button writes to the clipboard; the test reads it back from there.
    with browsing(
        monkeypatch, viewport={"width": 1200, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
    ) as browser:
        yield browser


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("CALLMISSED_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def _as_the_worker_reports_it(session_id: str) -> None:
    """What the agent worker sends for a finished three-turn call (the same Celery task bodies)."""
    tasks.session_started(contracts.SessionStarted(session_id=session_id, providers="offline").model_dump(mode="json"))
    at = 0
    for role, text in CONVERSATION:
        segment = contracts.TranscriptSegment(
            session_id=session_id, role=role, text=text, start_offset_ms=at, end_offset_ms=at + 2400
        )
        tasks.transcript_segment(segment.model_dump(mode="json"))
        at += 3000
    usage = contracts.UsageReported(
        session_id=session_id,
        items=[
            contracts.UsageItem(component=C.STT_SECONDS, model="saaras:v3", provider="sarvam", quantity=14.2),
            contracts.UsageItem(component=C.TTS_CHARACTERS, model="bulbul:v3", provider="sarvam", quantity=164),
            contracts.UsageItem(component=C.LLM_INPUT_TOKENS, model="kimi-k2.5", provider="clarifai", quantity=1900),
            contracts.UsageItem(component=C.LLM_OUTPUT_TOKENS, model="kimi-k2.5", provider="clarifai", quantity=96),
        ],
    )
    tasks.usage_reported(usage.model_dump(mode="json"))
    ended = contracts.SessionEnded(
        session_id=session_id,
        reason=contracts.EndReason.COMPLETED,
        duration_seconds=15.4,
        turn_latencies=[contracts.TurnLatency(**turn) for turn in LATENCIES],
    )
    tasks.session_ended(ended.model_dump(mode="json"))


def _earlier_days(organization: Any) -> None:
    """A fortnight of earlier calls, so the overview has a history to stack."""
    today = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    for days_ago in range(1, 15, 2):
        session = VoiceSessionFactory.create(
            organization=organization,
            status=VoiceSession.Status.ENDED,
            end_reason="completed",
            duration_seconds=30 + days_ago,
            transport="websocket" if days_ago % 3 else "livekit",
        )
        VoiceSession.objects.filter(pk=session.pk).update(created_at=today - timedelta(days=days_ago))
        apply_usage(
            usage_event(
                session,
                (C.STT_SECONDS, "saaras:v3", 40 + 3 * days_ago),
                (C.TTS_CHARACTERS, "bulbul:v3", 600 + 25 * days_ago),
                (C.LLM_INPUT_TOKENS, "kimi-k2.5", 2500),
                (C.LLM_OUTPUT_TOKENS, "kimi-k2.5", 300),
                at=today - timedelta(days=days_ago),
            )
        )


def _chart(page: Any, canvas: str) -> dict[str, Any]:
    """What Chart.js itself holds for the canvas: labels and each dataset's label and numbers."""
    page.wait_for_function("(s) => window.Chart && Chart.getChart(document.querySelector(s))", arg=canvas)
    return dict(
        page.evaluate(
            """(selector) => {
                const chart = Chart.getChart(document.querySelector(selector));
                if (!chart) return null;
                return {type: chart.config.type, labels: chart.data.labels,
                        datasets: chart.data.datasets.map((d) => ({label: d.label, data: d.data}))};
            }""",
            canvas,
        )
    )


def test_a_customers_first_session_from_signup_to_a_revoked_key(
    browser: Browser, live_server: Any, shots: Path
) -> None:
    page, base = browser.page, live_server.url

    browser.visit(f"{base}/signup/")
    sign_up(page, base, username="meera", organization="Meera's Kitchen", password=PASSWORD)

    page.fill("#id_name", "booking line")
    page.click("text=Create key")
    plaintext = page.inner_text("[data-testid=new-key]").strip()
    assert plaintext.startswith("cm_")
    page.click("[data-testid=copy-key]")
    page.wait_for_selector("[data-testid=copy-key]:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == plaintext
    page.screenshot(path=shots / "keys.png", full_page=True)

    status, created = _api(
        base,
        "/v1/voice/sessions",
        plaintext,
        {
            "language": "hi-IN",
            "voice": "priya",
            "system_prompt": "You take table bookings for Meera's Kitchen.",
            "metadata": {"ticket": "T-42", "channel": "web"},
        },
    )
    assert status == 201, created
    status, other = _api(base, "/v1/voice/sessions", plaintext, {"metadata": {"ticket": "T-7"}})
    assert status == 201, other
    session_id = created["id"]
    _as_the_worker_reports_it(session_id)
    organization = VoiceSession.objects.get(pk=session_id).organization
    _earlier_days(organization)
    status, detail = _api(base, f"/v1/voice/sessions/{session_id}", plaintext)
    cost = Decimal(detail["usage"]["total_cost"])
    assert cost > 0

    page.click("nav >> text=Sessions")
    row = page.locator(f"tr[data-session='{session_id}']")
    assert row.locator("[data-testid=cost]").inner_text() == f"{cost:.6f}"
    assert "completed" in row.inner_text() and "15.4 s" in row.inner_text()
    assert page.locator("tbody tr").count() == 9
    page.screenshot(path=shots / "sessions.png", full_page=True)

    page.fill("#id_metadata_key", "ticket")
    page.fill("#id_metadata_value", "T-42")
    page.click("text=Filter")
    page.wait_for_url(re.compile(r"metadata_value=T-42"))
    assert [r.get_attribute("data-session") for r in page.locator("tbody tr").all()] == [session_id]

    row.locator("a").click()
    page.wait_for_url(f"{base}/dashboard/sessions/{session_id}/")
    transcript = page.inner_text("[data-testid=transcript]")
    assert all(text in transcript for _, text in CONVERSATION)
    assert "hi-IN" in page.inner_text("[data-testid=config]") and "T-42" in page.inner_text("[data-testid=metadata]")
    assert "Speech recognition (seconds)" in page.inner_text("[data-testid=cost-breakdown]")
    latency = _chart(page, "#latency-chart")
    assert latency["labels"] == ["Turn 1", "Turn 2", "Turn 3"]
    first_audio = next(d for d in latency["datasets"] if d["label"].startswith("End of speech"))
    assert first_audio["data"] == [t["end_of_speech_to_first_audio_ms"] for t in LATENCIES]
    page.screenshot(path=shots / "session.png", full_page=True)

    page.click("nav >> text=Overview")
    usage = _chart(page, "#usage-chart")
    assert usage["type"] == "bar" and len(usage["labels"]) == 30
    today = sum(d["data"][-1] for d in usage["datasets"])
    assert today == pytest.approx(float(cost), abs=5e-7)  # today: the call just made (the API rounds to 6 places)
    assert sum(1 for day in range(30) if any(d["data"][day] for d in usage["datasets"])) == 8
    page.screenshot(path=shots / "overview.png", full_page=True)
    page.select_option("#id_by", "model")
    page.click("text=Show")
    page.wait_for_url(re.compile(r"by=model"))
    assert {d["label"] for d in _chart(page, "#usage-chart")["datasets"]} == {"saaras:v3", "bulbul:v3", "kimi-k2.5"}

    page.click("nav >> text=Billing")
    page.fill("#id_spend_cap_monthly", "50")
    page.click("text=Save cap")
    page.wait_for_selector(".flash")
    assert "50.000000" in page.inner_text("[data-testid=spend]")
    assert "Usage" in page.inner_text("[data-testid=ledger]") and "Signup credit" in page.inner_text(
        "[data-testid=ledger]"
    )
    page.screenshot(path=shots / "billing.png", full_page=True)

    browser.visit(f"{base}/dashboard/no-such-page/", status=404)
    page.screenshot(path=shots / "not-found.png", full_page=True)

    page.click("nav >> text=API keys")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Revoke')")
    page.wait_for_selector(".flash")
    assert "revoked" in page.inner_text(".flash")
    status, body = _api(base, "/v1/voice/sessions", plaintext)
    assert status == 401 and body["error"]["code"] == "revoked_api_key"
    browser.assert_clean()
