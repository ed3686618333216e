"""Usage events priced exactly, once, at the price in force when they happened — seen through the API."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from agent_worker import contracts
from billing import selectors
from billing.models import LedgerEntry, ModelPrice, UsageRecord
from billing.pricing import PriceMissing
from billing.tests.support import KIMI_TURN, C, apply_usage, usage_event
from voice import tasks
from voice.models import VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db


def _session(client, **fields) -> VoiceSession:
    return VoiceSessionFactory.create(organization=client.org, **fields)


def _detail(client, session: VoiceSession) -> dict:
    response = client.get(f"/v1/voice/sessions/{session.pk}")
    assert response.status_code == 200
    return response.json()


def test_a_sessions_cost_is_exact_per_component_and_model(api) -> None:
    kimi = _session(api)
    sarvam = _session(api, llm_model="sarvam-105b")
    apply_usage(usage_event(kimi, *KIMI_TURN))
    apply_usage(usage_event(kimi, *KIMI_TURN))
    apply_usage(
        event=usage_event(
            sarvam,
            (C.STT_SECONDS, "saaras:v3", 10),
            (C.LLM_INPUT_TOKENS, "sarvam-105b", 1000),
            (C.LLM_OUTPUT_TOKENS, "sarvam-105b", 200),
        )
    )

    usage = _detail(api, kimi)["usage"]
    assert usage["currency"] == "USD"
    # saaras:v3 INR 30/h, bulbul:v3 INR 30/10k chars at 0.0112 USD/INR; Kimi USD 0.52/2.30 per 1M.
    assert [tuple(i.values()) for i in usage["items"]] == [
        ("llm_input_tokens", "kimi-k2.5", "clarifai", "3000", "0.001560"),
        ("llm_output_tokens", "kimi-k2.5", "clarifai", "640", "0.001472"),
        ("stt_seconds", "saaras:v3", "sarvam", "123", "0.011480"),
        ("tts_characters", "bulbul:v3", "sarvam", "2468", "0.082925"),
    ]
    assert list(usage["items"][0]) == ["component", "model", "provider", "quantity", "cost"]
    assert usage["total_cost"] == "0.097437"  # 2 × 0.0487184

    other = _detail(api, sarvam)["usage"]
    # 10 s of STT is 0.000933333… USD: kept to 12 places, shown to 6.
    assert [i["cost"] for i in other["items"]] == ["0.000328", "0.000164", "0.000933"]
    assert other["total_cost"] == "0.001425"

    limits = api.get("/v1/billing/limits").json()
    assert limits["balance"] == "4.901138"  # 5.00 signup credit − 0.0974368 − 0.001425237333
    assert limits["month_to_date_spend"] == "0.098862"


def test_a_replayed_usage_event_is_counted_once(api) -> None:
    session = _session(api)
    event = usage_event(session, *KIMI_TURN)
    first = apply_usage(event)
    again = apply_usage(event)
    tasks.usage_reported(event.model_dump(mode="json"))  # the Celery path, redelivered

    assert first is not None and len(first.records) == 4
    assert again is not None and again.duplicate
    assert UsageRecord.objects.filter(session_id=session.pk).count() == 4
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE).count() == 1
    assert _detail(api, session)["usage"]["total_cost"] == "0.048718"


def test_a_price_change_mid_month_prices_each_usage_at_the_rate_in_force(api) -> None:
    ModelPrice.objects.create(
        model="kimi-k2.5",
        component=C.LLM_INPUT_TOKENS,
        currency="USD",
        unit_price=Decimal("1.00"),
        per_units=1_000_000,
        effective_from=datetime(2026, 11, 15, tzinfo=UTC),
    )
    session = _session(api)
    before = datetime(2026, 11, 14, 23, 59, 59, tzinfo=UTC)
    after = datetime(2026, 11, 15, 0, 0, 0, tzinfo=UTC)
    apply_usage(usage_event(session, (C.LLM_INPUT_TOKENS, "kimi-k2.5", 1_000_000), at=before))
    apply_usage(usage_event(session, (C.LLM_INPUT_TOKENS, "kimi-k2.5", 1_000_000), at=after))

    usage = api.get("/v1/usage", {"start": "2026-11-01", "end": "2026-11-30"}).json()
    assert [tuple(i.values()) for i in usage["items"]] == [
        ("2026-11-14", "llm_input_tokens", "kimi-k2.5", "1000000", "0.520000"),
        ("2026-11-15", "llm_input_tokens", "kimi-k2.5", "1000000", "1.000000"),
    ]
    assert usage["total_cost"] == "1.520000"


def test_openrouter_models_use_their_own_row_or_the_default(api) -> None:
    session = _session(api, llm_model="meta-llama/llama-4-maverick")
    apply_usage(
        event=usage_event(
            session,
            (C.LLM_OUTPUT_TOKENS, "meta-llama/llama-4-maverick", 1_000_000),  # the openrouter/* default: 2.025
            (C.LLM_OUTPUT_TOKENS, "moonshotai/kimi-k2.5", 2_000_000),  # its own row: 2.025
        )
    )
    ModelPrice.objects.create(
        model="meta-llama/llama-4-maverick",
        component=C.LLM_OUTPUT_TOKENS,
        unit_price=Decimal("0.60"),
        per_units=1_000_000,
        effective_from=datetime(2026, 11, 1, tzinfo=UTC),
    )
    apply_usage(usage_event(session, (C.LLM_OUTPUT_TOKENS, "meta-llama/llama-4-maverick", 1e6)))

    costs = sorted(r.cost for r in UsageRecord.objects.filter(session_id=session.pk))
    assert costs == [Decimal("0.6"), Decimal("2.025"), Decimal("4.05")]


def test_usage_without_a_price_is_kept_for_retry_not_dropped(api) -> None:
    session = _session(api)
    event = usage_event(session, (C.TTS_CHARACTERS, "bulbul:v9", 100))
    with pytest.raises(PriceMissing, match="bulbul:v9"):
        apply_usage(event)
    assert not UsageRecord.objects.exists()

    ModelPrice.objects.create(
        model="bulbul:v9",
        component=C.TTS_CHARACTERS,
        currency="INR",
        unit_price=Decimal("30"),
        per_units=10_000,
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    apply_usage(event)  # the task's retry, once the admin added the row
    assert UsageRecord.objects.get().cost == Decimal("0.00336")


def test_usage_is_aggregated_by_day_model_and_component_for_the_caller_only(api, make_client) -> None:
    other = make_client("Other Org")
    mine = _session(api)
    theirs = _session(other)
    day1 = datetime(2026, 11, 3, 10, tzinfo=UTC)
    day2 = datetime(2026, 11, 4, 23, 30, tzinfo=UTC)
    apply_usage(usage_event(mine, (C.STT_SECONDS, "saaras:v3", 30), at=day1))
    apply_usage(usage_event(mine, (C.STT_SECONDS, "saaras:v3", 90), at=day1))
    apply_usage(usage_event(mine, (C.STT_SECONDS, "saaras:v3", 360), at=day2))
    apply_usage(usage_event(theirs, (C.STT_SECONDS, "saaras:v3", 9999), at=day1))

    usage = api.get("/v1/usage", {"start": "2026-11-03", "end": "2026-11-04"}).json()
    assert [(i["date"], i["quantity"], i["cost"]) for i in usage["items"]] == [
        ("2026-11-03", "120", "0.011200"),
        ("2026-11-04", "360", "0.033600"),
    ]
    assert api.get("/v1/usage", {"start": "2026-11-04", "end": "2026-11-04"}).json()["total_cost"] == "0.033600"
    assert other.get("/v1/usage", {"start": "2026-11-03", "end": "2026-11-04"}).json()["total_cost"] == "0.933240"
    # Another organization's session, and its usage, is a 404.
    assert other.get(f"/v1/voice/sessions/{mine.pk}").status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"start": "2026-11-05", "end": "2026-11-01"}, "start"),
        ({"start": "2024-01-01", "end": "2026-11-01"}, "end"),
        ({"start": "yesterday"}, "start"),
        ({"month": "2026-11"}, "month"),
    ],
)
def test_bad_usage_ranges_name_the_field(api, query, field) -> None:
    response = api.get("/v1/usage", query)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_usage_needs_a_key(client) -> None:
    assert client.get("/v1/usage").status_code == 401


def test_exhausting_the_balance_ends_live_sessions_and_refuses_new_ones(
    api, livekit_server, django_capture_on_commit_callbacks
) -> None:
    live = _session(api, status=VoiceSession.Status.ACTIVE)
    done = _session(api, status=VoiceSession.Status.ENDED, end_reason=contracts.EndReason.COMPLETED)
    with django_capture_on_commit_callbacks(execute=True):
        apply_usage(usage_event(live, (C.LLM_OUTPUT_TOKENS, "kimi-k2.5", 3_000_000)))  # 6.90

    live.refresh_from_db()
    done.refresh_from_db()
    assert live.status == VoiceSession.Status.ENDED
    assert live.end_reason == contracts.EndReason.INSUFFICIENT_FUNDS
    assert done.end_reason == contracts.EndReason.COMPLETED
    assert [c.request.room for c in livekit_server.calls_to("DeleteRoom")] == [live.room_name]

    response = api.post("/v1/voice/sessions", {}, format="json")
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "payment_required"
    assert "-1.900000 USD" in error["message"]
    assert api.get("/v1/billing/limits").json()["balance"] == "-1.900000"


def test_a_spend_cap_refuses_new_sessions_once_reached(api) -> None:
    account = selectors.billing_account_get(organization=api.org)
    account.prepaid = False
    account.spend_cap_monthly = Decimal("0.05")
    account.save()
    assert api.post("/v1/voice/sessions", {}, format="json").status_code == 201

    apply_usage(usage_event(_session(api), *KIMI_TURN))  # 0.0487184: under the cap
    assert api.post("/v1/voice/sessions", {}, format="json").status_code == 201
    apply_usage(usage_event(_session(api), (C.STT_SECONDS, "saaras:v3", 30)))

    response = api.post("/v1/voice/sessions", {}, format="json")
    assert response.status_code == 402
    assert "spend cap of 0.050000 USD" in response.json()["error"]["message"]
    limits = api.get("/v1/billing/limits").json()
    assert (limits["prepaid"], limits["spend_cap_monthly"], limits["month_to_date_spend"]) == (
        False,
        "0.050000",
        "0.051518",
    )


def test_too_many_live_sessions_is_a_429_with_retry_after(api, make_client) -> None:
    account = selectors.billing_account_get(organization=api.org)
    account.max_concurrent_sessions = 2
    account.save()
    for _ in range(2):
        assert api.post("/v1/voice/sessions", {}, format="json").status_code == 201

    response = api.post("/v1/voice/sessions", {}, format="json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "concurrency_limit"
    assert int(response["Retry-After"]) > 0
    assert api.get("/v1/billing/limits").json()["live_sessions"] == 2
    # The cap is per organization.
    assert make_client("Another").post("/v1/voice/sessions", {}, format="json").status_code == 201

    VoiceSession.objects.filter(organization=api.org).update(status=VoiceSession.Status.ENDED)
    assert api.post("/v1/voice/sessions", {}, format="json").status_code == 201


def test_offline_sessions_record_usage_at_no_cost(api) -> None:
    session = _session(api)
    apply_usage(
        event=usage_event(
            session,
            (C.STT_SECONDS, "offline-pocketsphinx", 12.5),
            (C.TTS_CHARACTERS, "piper", 300),
            (C.LLM_INPUT_TOKENS, "scripted", 40),
            (C.LLM_OUTPUT_TOKENS, "scripted", 25),
        )
    )
    usage = _detail(api, session)["usage"]
    assert len(usage["items"]) == 4
    assert usage["total_cost"] == "0.000000"


def test_the_catalog_shows_current_model_prices(client) -> None:
    models = {m["id"]: m for m in client.get("/v1/catalog/models").json()}
    prices = models["kimi-k2.5"]["prices"]
    assert [(p["component"], p["currency"], p["unit_price"], p["per_units"]) for p in prices] == [
        ("llm_input_tokens", "USD", "0.52", 1_000_000),
        ("llm_output_tokens", "USD", "2.3", 1_000_000),
    ]
    assert not any(p["confirmed"] for p in prices)
    assert models["sarvam-105b"]["prices"][0]["currency"] == "INR"
    assert models["kimi-k2.5-fast"]["prices"] == []
