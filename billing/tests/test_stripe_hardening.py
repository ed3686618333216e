"""Money never moves the wrong way on a signed Stripe event, and Stripe's failures never become 500s.

Top-ups credit only a Checkout Session we created, for its organization, amount and currency;
signatures dated in the future are refused; signed but malformed events answer 400 in the
envelope and leave a trace; checkout turns Stripe's errors into 502/400/409 in the envelope.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.exceptions import OperationalError as KombuOperationalError

from accounts.models import Membership
from billing import stripe_gateway, tasks, webhooks
from billing.models import BillingAccount, LedgerEntry, StripeWebhookEvent, TopUpCheckout
from billing.tests.conftest import WEBHOOK, WEBHOOK_SECRET, deliver, deliver_raw
from testsupport.fakes.stripe_api import FakeStripe, event_payload, signed_webhook

pytestmark = pytest.mark.django_db

CHECKOUT = "/v1/billing/checkout"
CHECKOUT_BODY = {"amount_usd": "20.00", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"}
SIGNUP_BALANCE = "5.000000"


def _balance(client: Any) -> str:
    return str(client.get("/v1/billing/limits").json()["balance"])


def _checkout(client: Any, **overrides: Any) -> str:
    response = client.post(CHECKOUT, {**CHECKOUT_BODY, **overrides}, format="json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def _paid_event(stripe_fake: FakeStripe, checkout_id: str) -> dict[str, Any]:
    return copy.deepcopy(stripe_fake.complete_checkout_session(checkout_id))


def _assert_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "request_id" in error
    return dict(error)


def _assert_refused(event_id: str, *words: str) -> StripeWebhookEvent:
    row = StripeWebhookEvent.objects.get(pk=event_id)
    assert row.processed_at is not None, "a refused event is settled, never retried forever"
    assert row.error and all(word in row.error for word in words), row.error
    return row


# --- top-ups credit only what we asked for -------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def change(obj: dict[str, Any]) -> None:
        node = obj
        *parents, last = path.split(".")
        for name in parents:
            node = node[name]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_set("amount_total", 0), "amount_total"),
        (_set("amount_total", -2000), "amount_total"),
        (_set("amount_total", 2_000_000), "amount_total"),
        (_set("currency", "eur"), "eur"),
        (_set("mode", "subscription"), "mode"),
        (_set("payment_status", "no_payment_required"), "payment status"),
        (_set("id", "cs_test_never_created_by_us"), "not created by this platform"),
    ],
    ids=["zero", "negative", "more-than-asked", "other-currency", "not-a-payment", "not-paid", "unknown-checkout"],
)
def test_a_top_up_that_differs_from_our_checkout_credits_nothing_and_says_why(api, stripe_fake, change, why) -> None:
    event = _paid_event(stripe_fake, _checkout(api))
    change(event["data"]["object"])

    response = deliver(api, event)

    assert response.status_code == 200  # stored: Stripe must not redeliver it for days
    assert _balance(api) == SIGNUP_BALANCE
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP).exists()
    _assert_refused(event["id"], why)


def test_a_top_up_naming_another_organization_credits_neither(api, make_client, stripe_fake) -> None:
    other = make_client("Other org")
    theirs = _paid_event(stripe_fake, _checkout(other))
    # Our checkout, paid, but the event names the other organization (and the reverse).
    ours = _paid_event(stripe_fake, _checkout(api))
    ours["data"]["object"]["metadata"]["organization_id"] = str(other.org.pk)
    ours["data"]["object"]["client_reference_id"] = str(other.org.pk)
    theirs["data"]["object"]["metadata"]["organization_id"] = str(api.org.pk)

    assert deliver(api, ours).status_code == deliver(api, theirs).status_code == 200

    assert _balance(api) == _balance(other) == SIGNUP_BALANCE
    _assert_refused(ours["id"], "was created for")
    _assert_refused(theirs["id"], "was created for")


def test_the_checkout_we_created_is_credited_once_with_its_own_amount(api, stripe_fake) -> None:
    checkout_id = _checkout(api, amount_usd="12.34")
    event = _paid_event(stripe_fake, checkout_id)

    assert deliver(api, event).status_code == 200
    assert deliver(api, dict(event, id="evt_async", type="checkout.session.async_payment_succeeded")).status_code == 200

    assert _balance(api) == "17.340000"
    recorded = TopUpCheckout.objects.get(stripe_id=checkout_id)
    assert (recorded.amount_cents, recorded.currency, recorded.status) == (1234, "usd", TopUpCheckout.Status.CREDITED)
    assert StripeWebhookEvent.objects.get(pk=event["id"]).error == ""


def test_a_replayed_event_id_never_applies_a_different_payload(api, stripe_fake) -> None:
    checkout_id = _checkout(api)
    honest = _paid_event(stripe_fake, checkout_id)
    forged_first = copy.deepcopy(honest)
    forged_first["data"]["object"]["amount_total"] = 999_999

    assert deliver(api, forged_first).status_code == 200
    replay = deliver(api, honest)  # same event id, now with the right amount

    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert _balance(api) == SIGNUP_BALANCE
    _assert_refused(honest["id"], "amount_total")


def test_an_invoice_for_a_customer_we_do_not_know_changes_no_account(api, stripe_fake) -> None:
    # The metadata names our organization, but Stripe charged somebody else's customer.
    invoice = {
        "id": "in_x",
        "object": "invoice",
        "customer": "cus_not_ours",
        "metadata": {"organization_id": str(api.org.pk)},
    }
    event = event_payload("invoice.payment_failed", invoice)
    assert api.get("/v1/billing/limits").json()["payment_failed"] is False

    assert deliver(api, event).status_code == 200

    assert api.get("/v1/billing/limits").json()["payment_failed"] is False
    _assert_refused(event["id"], "not one of ours")


def test_reconciliation_applies_the_same_rules_as_the_webhook(api, stripe_fake) -> None:
    checkout_id = _checkout(api)
    paid = stripe_fake.checkout_sessions[checkout_id]
    inflated = dict(copy.deepcopy(paid), payment_status="paid", status="complete", amount_total=500_000)
    stripe_fake.add_event("checkout.session.completed", inflated)
    stripe_fake.add_event("checkout.session.completed", dict(inflated, id="cs_test_not_ours", amount_total=2000))
    stripe_fake.add_event("checkout.session.completed", dict(inflated, amount_total="2000"))  # malformed

    assert tasks.reconcile_stripe() == {"recovered": 0, "drifting": 0}

    assert _balance(api) == SIGNUP_BALANCE
    errors = sorted(StripeWebhookEvent.objects.values_list("error", flat=True))
    assert len(errors) == 3 and all(errors)


# --- signatures -----------------------------------------------------------------------------------


def test_a_signature_dated_in_the_future_is_refused_and_nothing_is_stored(api, stripe_fake) -> None:
    event = _paid_event(stripe_fake, _checkout(api))
    an_hour_ahead = int(time.time()) + 3600

    response = deliver(api, event, timestamp=an_hour_ahead)

    _assert_envelope(response, 400, "validation_error")
    assert "future" in response.json()["error"]["message"]
    assert not StripeWebhookEvent.objects.exists() and _balance(api) == SIGNUP_BALANCE


def test_signature_timestamps_are_accepted_only_within_the_skew_and_age_limits(settings) -> None:
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    now = 1_900_000_000
    body, _ = signed_webhook({"id": "evt_1"}, WEBHOOK_SECRET)

    def verify(signed_at: int) -> Any:
        _, signature = signed_webhook(json.loads(body), WEBHOOK_SECRET, timestamp=signed_at)
        return stripe_gateway.webhook_verify(body=body, signature=signature, now=now)

    assert verify(now + stripe_gateway.SIGNATURE_MAX_FUTURE_SECONDS) == {"id": "evt_1"}
    assert verify(now - stripe_gateway.SIGNATURE_MAX_AGE_SECONDS) == {"id": "evt_1"}
    with pytest.raises(ValueError, match="future"):
        verify(now + stripe_gateway.SIGNATURE_MAX_FUTURE_SECONDS + 1)
    with pytest.raises(ValueError, match="older"):
        verify(now - stripe_gateway.SIGNATURE_MAX_AGE_SECONDS - 1)


def test_a_signature_header_that_is_not_ascii_is_a_400(client, stripe_fake) -> None:
    response = client.generic(
        "POST", WEBHOOK, b"{}", content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=\u00e9\u00e9"
    )
    _assert_envelope(response, 400, "validation_error")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.text(st.characters(min_codepoint=32, max_codepoint=255), min_size=1, max_size=80)
    | st.builds("t={},v1={}".format, st.integers(0, 2**40) | st.text(max_size=12), st.text(max_size=70))
)
def test_no_stripe_signature_header_gets_a_500(client, stripe_fake, header) -> None:
    body = json.dumps(_event()).encode()
    response = client.generic("POST", WEBHOOK, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)

    _assert_envelope(response, 400, "validation_error")
    assert not StripeWebhookEvent.objects.exists()


# --- malformed signed events ----------------------------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    event = event_payload("checkout.session.completed", {"id": "cs_test_x", "payment_status": "paid"})
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()
_NESTED: Any = "leaf"
for _ in range(200):
    _NESTED = {"a": _NESTED}


@pytest.mark.parametrize(
    ("body", "stored_id"),
    [
        (b"not json at all", None),
        (b"\xff\xfe\x00 not utf-8", None),
        (b"[1, 2, 3]", None),
        (b'{"id": "evt_nan", "type": "x", "created": NaN, "data": {"object": {}}}', None),
        (b'{"id": "evt_bigint", "created": ' + b"9" * 5000 + b"}", None),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (json.dumps(_event(id=_DROP)).encode(), None),
        (json.dumps(_event(id=12345)).encode(), None),
        (json.dumps(_event(id="")).encode(), None),
        (json.dumps(_event(id="evt_" + "x" * 300)).encode(), None),
        (json.dumps(_event(id="evt_no_type", type=_DROP)).encode(), "evt_no_type"),
        (json.dumps(_event(id="evt_created_text", created="yesterday")).encode(), "evt_created_text"),
        (json.dumps(_event(id="evt_created_float", created=1.5e9)).encode(), "evt_created_float"),
        (json.dumps(_event(id="evt_created_huge", created=10**30)).encode(), "evt_created_huge"),
        (json.dumps(_event(id="evt_data_list", data=[])).encode(), "evt_data_list"),
        (json.dumps(_event(id="evt_object_text", data={"object": "cs_test_x"})).encode(), "evt_object_text"),
        (
            json.dumps(_event(id="evt_amount_text", data={"object": {"id": "cs_1", "amount_total": "2000"}})).encode(),
            "evt_amount_text",
        ),
        (
            json.dumps(_event(id="evt_amount_bool", data={"object": {"id": "cs_1", "amount_total": True}})).encode(),
            "evt_amount_bool",
        ),
        (
            json.dumps(_event(id="evt_nul", data={"object": {"id": "cs_1", "metadata": {"k": "a\x00b"}}})).encode(),
            "evt_nul",
        ),
        (json.dumps(_event(id="evt_surrogate", type="checkout.\ud800")).encode(), "evt_surrogate"),
        (json.dumps(_event(id="evt_deep", data={"object": _NESTED})).encode(), "evt_deep"),
    ],
    ids=lambda value: None if isinstance(value, bytes) else str(value),
)
def test_a_signed_but_malformed_event_is_a_400_in_the_envelope_with_a_trace(api, stripe_fake, body, stored_id) -> None:
    response = deliver_raw(api, body)

    _assert_envelope(response, 400, "validation_error")
    assert _balance(api) == SIGNUP_BALANCE
    if stored_id is None:
        assert not StripeWebhookEvent.objects.exists()
    else:
        _assert_refused(stored_id, "Malformed")
        assert deliver_raw(api, body).status_code == 400  # redelivered: still refused, still one row
        assert StripeWebhookEvent.objects.count() == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
_types = st.sampled_from([*webhooks.HANDLED_TYPES, "customer.created"]) | st.text(max_size=5)
_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=6) | _json,
        "amount_total": st.integers(-(10**20), 10**20) | _json,
        "currency": st.sampled_from(["usd", "eur"]) | _json,
        "mode": st.just("payment") | _json,
        "payment_status": st.just("paid") | _json,
        "customer": st.text(max_size=6) | _json,
        "metadata": st.dictionaries(st.text(max_size=4), st.text(max_size=4) | _json, max_size=2) | _json,
        "client_reference_id": st.text(max_size=4) | _json,
    },
)
_events = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(min_size=1, max_size=10) | _json,
        "type": _types | _json,
        "created": st.integers(0, 2**40) | _json,
        "data": st.fixed_dictionaries({"object": _objects}) | _json,
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=_events | _json)
def test_no_signed_body_ever_gets_a_500(api, stripe_fake, event) -> None:
    response = deliver(api, event)

    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        _assert_envelope(response, 400, "validation_error")
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOP_UP).count() == 0


def test_a_body_over_the_upload_limit_is_a_413_in_the_envelope(api, stripe_fake, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    event = _event(id="evt_big", padding="x" * 2000)
    _assert_envelope(deliver(api, event), 413, "payload_too_large")
    assert not StripeWebhookEvent.objects.exists()


def test_an_event_that_cannot_be_queued_is_a_503_and_queued_on_redelivery(api, stripe_fake, monkeypatch) -> None:
    event = _paid_event(stripe_fake, _checkout(api))
    real_delay = tasks.apply_stripe_event.delay

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.apply_stripe_event, "delay", broker_down)
    response = deliver(api, event)
    _assert_envelope(response, 503, "service_unavailable")
    assert response.headers["Retry-After"]
    assert StripeWebhookEvent.objects.get(pk=event["id"]).processed_at is None

    monkeypatch.setattr(tasks.apply_stripe_event, "delay", real_delay)
    assert deliver(api, event).status_code == 200  # Stripe's redelivery
    assert _balance(api) == "25.000000"


def test_an_async_payment_is_credited_when_it_succeeds_not_when_the_session_completes(api, stripe_fake) -> None:
    checkout_id = _checkout(api)
    completed = _paid_event(stripe_fake, checkout_id)
    completed["data"]["object"]["payment_status"] = "unpaid"
    succeeded = copy.deepcopy(completed)
    succeeded.update(id="evt_async_ok", type="checkout.session.async_payment_succeeded")
    succeeded["data"]["object"]["payment_status"] = "paid"

    deliver(api, completed)
    assert _balance(api) == SIGNUP_BALANCE
    assert StripeWebhookEvent.objects.get(pk=completed["id"]).error == ""
    deliver(api, succeeded)
    assert _balance(api) == "25.000000"


# --- applying stored events -----------------------------------------------------------------------


def _store(event_id: str, payload: Any, type: str = "checkout.session.completed") -> None:
    StripeWebhookEvent.objects.create(event_id=event_id, type=type, created=timezone.now(), payload=payload)


def test_a_stored_event_that_cannot_be_applied_records_why_and_is_not_retried(api) -> None:
    # Stored by an earlier version that did not check shapes.
    _store("evt_old", {"id": "evt_old", "type": "checkout.session.completed", "data": {"object": "cs_1"}})

    assert tasks.apply_stripe_event(event_id="evt_old") is False
    row = _assert_refused("evt_old", "Malformed")
    assert row.attempts == 1
    assert tasks.apply_stripe_event(event_id="evt_old") is False
    row.refresh_from_db()
    assert row.attempts == 1


def test_a_database_failure_never_settles_a_paid_top_up_and_reconciliation_credits_it_later(
    api, stripe_fake, monkeypatch, caplog
) -> None:
    event = _paid_event(stripe_fake, _checkout(api))
    _store(event["id"], event)
    stripe_fake.events.clear()  # Stripe no longer lists it: only the stored row is left to retry
    real_apply_top_up = webhooks._apply_top_up

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(webhooks, "_apply_top_up", database_gone)
    for attempt in range(1, webhooks.MAX_APPLY_ATTEMPTS + 3):
        with pytest.raises(OperationalError):
            tasks.apply_stripe_event(event_id=event["id"])
        row = StripeWebhookEvent.objects.get(pk=event["id"])
        assert (row.attempts, row.processed_at) == (attempt, None) and "OperationalError" in row.error
    assert any(r.levelname == "ERROR" and event["id"] in r.getMessage() for r in caplog.records)
    assert tasks.reconcile_stripe()["recovered"] == 0  # still failing: recorded, not raised

    monkeypatch.setattr(webhooks, "_apply_top_up", real_apply_top_up)  # the database is back
    assert tasks.reconcile_stripe()["recovered"] == 1
    assert _balance(api) == "25.000000"
    assert StripeWebhookEvent.objects.get(pk=event["id"]).processed_at is not None


def test_an_unexpected_error_never_settles_a_paid_top_up(api, stripe_fake, monkeypatch) -> None:
    event = _paid_event(stripe_fake, _checkout(api))
    _store(event["id"], event)
    real_apply_top_up = webhooks._apply_top_up

    def bug(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a field this release does not expect")

    monkeypatch.setattr(webhooks, "_apply_top_up", bug)
    with pytest.raises(webhooks.ApplyDeferred):  # the Celery task retries on it
        tasks.apply_stripe_event(event_id=event["id"])
    row = StripeWebhookEvent.objects.get(pk=event["id"])
    assert (row.attempts, row.processed_at) == (1, None) and "KeyError" in row.error

    monkeypatch.setattr(webhooks, "_apply_top_up", real_apply_top_up)  # the fixed release
    assert tasks.reconcile_stripe()["recovered"] == 1
    assert _balance(api) == "25.000000"


def test_a_database_failure_on_an_invoice_event_is_retried_a_bounded_number_of_times(api, monkeypatch) -> None:
    invoice = {"id": "in_1", "object": "invoice", "customer": "cus_x"}
    event = event_payload("invoice.payment_failed", invoice)
    _store(event["id"], event, type="invoice.payment_failed")

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(webhooks, "_apply_payment_status", database_gone)
    for attempt in range(1, webhooks.MAX_APPLY_ATTEMPTS + 1):
        with pytest.raises(OperationalError):
            webhooks.stripe_event_apply(event_id=event["id"])
        row = StripeWebhookEvent.objects.get(pk=event["id"])
        assert row.attempts == attempt and "OperationalError" in row.error
        assert (row.processed_at is None) == (attempt < webhooks.MAX_APPLY_ATTEMPTS)
    assert webhooks.stripe_event_apply(event_id=event["id"]) is False


# --- sessions created before TopUpCheckout existed --------------------------------------------------


def _pre_table_checkout(api: Any, stripe_fake: FakeStripe) -> tuple[str, dict[str, Any]]:
    """A session our checkout created at Stripe before deploy day's table: no row, then paid."""
    checkout_id = _checkout(api)
    TopUpCheckout.objects.filter(stripe_id=checkout_id).delete()
    return checkout_id, _paid_event(stripe_fake, checkout_id)


def test_a_paid_session_created_before_the_checkout_table_is_credited_from_stripes_copy(api, stripe_fake) -> None:
    checkout_id, event = _pre_table_checkout(api, stripe_fake)

    assert deliver(api, event).status_code == 200

    assert _balance(api) == "25.000000"
    assert stripe_fake.requests_to(f"/v1/checkout/sessions/{checkout_id}", "GET")
    adopted = TopUpCheckout.objects.get(stripe_id=checkout_id)
    assert (adopted.organization_id, adopted.amount_cents, adopted.currency, adopted.status) == (
        api.org.pk,
        2000,
        "usd",
        TopUpCheckout.Status.CREDITED,
    )
    assert StripeWebhookEvent.objects.get(pk=event["id"]).error == ""


def test_an_adopted_session_is_recorded_from_stripes_copy_not_the_events(api, stripe_fake) -> None:
    checkout_id, event = _pre_table_checkout(api, stripe_fake)
    event["data"]["object"]["amount_total"] = 500_000

    assert deliver(api, event).status_code == 200

    assert _balance(api) == SIGNUP_BALANCE
    assert TopUpCheckout.objects.get(stripe_id=checkout_id).amount_cents == 2000
    _assert_refused(event["id"], "amount_total")


def _stripe_copy(path: str, value: Any) -> Any:
    return lambda session, other_org: _set(path, other_org if value is _OTHER_ORG else value)(session)


_OTHER_ORG = object()


@pytest.mark.parametrize(
    "change",
    [
        _stripe_copy("metadata", {}),
        _stripe_copy("metadata.purpose", "subscription_setup"),
        _stripe_copy("metadata.organization_id", "00000000-0000-0000-0000-000000000000"),
        _stripe_copy("metadata.organization_id", "not-a-uuid"),
        _stripe_copy("metadata.organization_id", _OTHER_ORG),
        _stripe_copy("client_reference_id", _OTHER_ORG),
        _stripe_copy("mode", "subscription"),
        _stripe_copy("currency", "eur"),
        _stripe_copy("amount_total", 0),
    ],
    ids=[
        "no-metadata",
        "not-a-top-up",
        "unknown-org",
        "malformed-org",
        "another-org",
        "another-client-reference",
        "not-a-payment",
        "other-currency",
        "zero",
    ],
)
def test_a_session_stripe_does_not_vouch_for_as_our_top_up_is_never_adopted(
    api, make_client, stripe_fake, change
) -> None:
    other = make_client("Other org")
    checkout_id, event = _pre_table_checkout(api, stripe_fake)
    change(stripe_fake.checkout_sessions[checkout_id], str(other.org.pk))  # Stripe's copy; the event is unchanged

    assert deliver(api, event).status_code == 200

    assert _balance(api) == _balance(other) == SIGNUP_BALANCE
    assert not TopUpCheckout.objects.filter(stripe_id=checkout_id).exists()
    _assert_refused(event["id"], "not created by this platform")


@pytest.mark.parametrize(
    "fault",
    [
        lambda fake: fake.fail_next("/v1/checkout/sessions", 500, should_retry=False),
        lambda fake: fake.fail_next("/v1/checkout/sessions", 429, should_retry=False),
        lambda fake: fake.fail_next("/v1/checkout/sessions", 401),
        lambda fake: fake.drop_connection_next("/v1/checkout/sessions", times=3, processed=False),
    ],
    ids=["500", "429", "401", "unreachable"],
)
def test_stripe_failing_while_adopting_a_paid_session_is_retried_never_settled(api, stripe_fake, fault) -> None:
    checkout_id, event = _pre_table_checkout(api, stripe_fake)
    _store(event["id"], event)
    fault(stripe_fake)

    with pytest.raises(stripe_gateway.StripeFailure):  # the Celery task retries on it
        tasks.apply_stripe_event(event_id=event["id"])

    row = StripeWebhookEvent.objects.get(pk=event["id"])
    assert (row.attempts, row.processed_at) == (1, None) and "StripeFailure" in row.error
    assert _balance(api) == SIGNUP_BALANCE
    assert tasks.reconcile_stripe()["recovered"] == 1  # Stripe is back
    assert _balance(api) == "25.000000"
    assert TopUpCheckout.objects.get(stripe_id=checkout_id).status == TopUpCheckout.Status.CREDITED


# --- checkout against a failing Stripe ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"status": 500, "should_retry": False}, 502, "upstream_error"),
        ({"status": 429, "should_retry": False}, 502, "upstream_error"),
        ({"status": 401}, 502, "upstream_error"),
        ({"status": 402, "error_type": "card_error", "message": "Your card was declined."}, 502, "upstream_error"),
        ({"status": 404, "message": "No such customer: 'cus_gone'", "param": "customer"}, 502, "upstream_error"),
        ({"status": 400, "message": "Not a valid URL", "param": "success_url"}, 400, "validation_error"),
        (
            {"status": 400, "message": "Amount too small", "param": "line_items[0][price_data][unit_amount]"},
            400,
            "validation_error",
        ),
    ],
    ids=["api-error", "rate-limited", "bad-key", "card-error", "customer-gone", "bad-url", "bad-amount"],
)
def test_checkout_answers_stripe_errors_in_the_envelope_and_records_nothing(api, stripe_fake, fault, status, code):
    stripe_fake.fail_next("/v1/checkout/sessions", **fault)

    response = api.post(CHECKOUT, CHECKOUT_BODY, format="json")

    error = _assert_envelope(response, status, code)
    if code == "validation_error":
        assert set(error["fields"]) <= {"success_url", "amount_usd"} and error["fields"]
    assert "sk_test" not in response.content.decode()
    assert not TopUpCheckout.objects.exists()


def test_checkout_when_stripe_is_unreachable_is_a_502(api, stripe_fake) -> None:
    stripe_fake.drop_connection_next("/v1/checkout/sessions", processed=False, times=3)  # the library retries twice
    _assert_envelope(api.post(CHECKOUT, CHECKOUT_BODY, format="json"), 502, "upstream_error")
    assert not TopUpCheckout.objects.exists()


def test_checkout_when_the_customer_cannot_be_created_is_a_502_and_saves_no_customer(api, stripe_fake) -> None:
    stripe_fake.fail_next("/v1/customers", status=500, should_retry=False)
    _assert_envelope(api.post(CHECKOUT, CHECKOUT_BODY, format="json"), 502, "upstream_error")
    assert BillingAccount.objects.get(organization=api.org).stripe_customer_id == ""
    assert not TopUpCheckout.objects.exists()
    assert api.post(CHECKOUT, CHECKOUT_BODY, format="json").status_code == 201  # and the next try works


def test_an_idempotency_key_reused_for_another_amount_is_a_409(api, stripe_fake) -> None:
    first = api.post(CHECKOUT, CHECKOUT_BODY, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post(CHECKOUT, CHECKOUT_BODY, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    other = api.post(CHECKOUT, {**CHECKOUT_BODY, "amount_usd": "30.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    _assert_envelope(other, 409, "idempotency_conflict")
    assert list(TopUpCheckout.objects.values_list("amount_cents", flat=True)) == [2000]


_URL = '"https://a.example/"'


def _raw_checkout(amount: str = '"20"', success: str = _URL, cancel: str = _URL) -> str:
    """A checkout body written as raw JSON text, so it can hold what json.dumps would never write."""
    return f'{{"amount_usd": {amount}, "success_url": {success}, "cancel_url": {cancel}}}'


@pytest.mark.parametrize(
    ("raw_body", "code"),
    [
        (_raw_checkout(amount='"NaN"'), "validation_error"),
        (_raw_checkout(amount='"Infinity"'), "validation_error"),
        (_raw_checkout(amount='"-20"'), "validation_error"),
        (_raw_checkout(amount='"1e999999999"'), "validation_error"),
        (_raw_checkout(amount="1e400"), "invalid_request"),
        (_raw_checkout(amount="20.001"), "validation_error"),
        (_raw_checkout(amount="true"), "validation_error"),
        (_raw_checkout(success='"javascript:alert(1)"'), "validation_error"),
        (_raw_checkout(success='"ftp://a.example/"'), "validation_error"),
        (_raw_checkout(success='"https://a.example/\\u0000"'), "invalid_request"),
        (_raw_checkout(success='"https://a.example/\\ud800"'), "invalid_request"),
        (_raw_checkout(cancel='["https://a.example/"]'), "validation_error"),
    ],
)
# JSON the API never reads (1e400, NUL, a lone surrogate) is refused by the parser, the rest by the fields.
def test_checkout_input_that_stripe_would_refuse_is_a_400_before_stripe_is_called(api, stripe_fake, raw_body, code):
    response = api.generic("POST", CHECKOUT, raw_body, content_type="application/json")

    _assert_envelope(response, 400, code)
    assert not stripe_fake.requests_to("/v1/checkout/sessions")


def test_two_long_idempotency_keys_that_differ_only_at_the_end_get_two_checkouts(api, stripe_fake) -> None:
    first = api.post(CHECKOUT, CHECKOUT_BODY, format="json", HTTP_IDEMPOTENCY_KEY="k" * 300 + "-1")
    second = api.post(CHECKOUT, CHECKOUT_BODY, format="json", HTTP_IDEMPOTENCY_KEY="k" * 300 + "-2")

    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert TopUpCheckout.objects.count() == 2


def test_reconciliation_keeps_going_after_an_event_it_refuses(api, stripe_fake) -> None:
    stripe_fake.add_event("checkout.session.completed", {"id": "cs_bad", "amount_total": "x"}, created=None)
    checkout_id = _checkout(api)
    stripe_fake.complete_checkout_session(checkout_id)

    assert tasks.reconcile_stripe()["recovered"] == 1
    assert _balance(api) == "25.000000"
    assert StripeWebhookEvent.objects.filter(error="").count() == 1


def test_an_old_event_may_still_be_listed_and_applied(api, stripe_fake) -> None:
    checkout_id = _checkout(api)
    stripe_fake.checkout_sessions[checkout_id].update(payment_status="paid", status="complete")
    two_days_ago = int((timezone.now() - timedelta(days=2)).timestamp())
    stripe_fake.add_event(
        "checkout.session.completed", stripe_fake.checkout_sessions[checkout_id], created=two_days_ago
    )

    assert tasks.reconcile_stripe()["recovered"] == 1
    assert _balance(api) == "25.000000"


def test_the_admin_lists_refused_events_with_their_reason(admin_client, api, stripe_fake) -> None:
    event = _paid_event(stripe_fake, _checkout(api))
    event["data"]["object"]["amount_total"] = 1
    deliver(api, event)

    page = admin_client.get("/admin/billing/stripewebhookevent/", {"outcome": "refused"})
    assert page.status_code == 200 and event["id"] in page.content.decode()
    assert admin_client.get("/admin/billing/topupcheckout/").status_code == 200


def test_the_dashboard_top_up_shows_a_message_when_stripe_fails(client, api, stripe_fake) -> None:
    user = User.objects.create_user("payer", password="x" * 12)
    Membership.objects.create(user=user, organization=api.org, role=Membership.Role.OWNER)
    client.force_login(user)
    stripe_fake.fail_next("/v1/checkout/sessions", status=500, should_retry=False)

    page = client.post("/dashboard/billing/", {"amount_usd": "25"})

    assert page.status_code == 200 and "Payments are unavailable" in page.content.decode()
    assert not TopUpCheckout.objects.exists()
