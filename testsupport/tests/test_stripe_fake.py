"""The Stripe fake, driven by the real ``stripe`` library (StripeClient, and the module-level style).

What billing relies on is asserted through the library's own objects and exceptions, so a fake that
drifted from the wire format (form encoding, error JSON, headers) fails here first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe

from billing import stripe_gateway
from testsupport.fakes.stripe_api import FakeStripe, decode_form, event_payload, signed_webhook

API_KEY = "sk_test_callmissed_fake_0001"
WEBHOOK_SECRET = "whsec_test_secret"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def fake(server: FakeStripe) -> FakeStripe:
    server.reset()
    return server


def client_for(fake: FakeStripe, *, api_key: str = API_KEY, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": fake.api_base}, max_network_retries=retries)


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    return client_for(fake)


def create_meter(client: stripe.StripeClient, event_name: str = "call_minutes") -> Any:
    return client.v1.billing.meters.create(
        {
            "display_name": "Call minutes",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )


def minute_floor(ts: float) -> int:
    return int(ts) // 60 * 60


# --- wire format -------------------------------------------------------------------------------


def test_decode_form_rebuilds_nested_params_and_lists() -> None:
    pairs = [
        ("mode", "payment"),
        ("line_items[0][price_data][currency]", "inr"),
        ("line_items[0][quantity]", "1"),
        ("line_items[1][quantity]", "2"),
        ("metadata[0]", "kept as a map key"),
        ("expand[0]", "customer"),
    ]
    assert decode_form(pairs) == {
        "mode": "payment",
        "line_items": [{"price_data": {"currency": "inr"}, "quantity": "1"}, {"quantity": "2"}],
        "metadata": {"0": "kept as a map key"},
        "expand": ["customer"],
    }


# --- customers ---------------------------------------------------------------------------------


def test_customer_create_and_retrieve(fake: FakeStripe, client: stripe.StripeClient) -> None:
    before = int(time.time())
    customer = client.v1.customers.create(
        {"name": "Asha Rao", "email": "asha@example.com", "metadata": {"organization_id": "42"}}
    )

    assert customer.id.startswith("cus_")
    assert customer.object == "customer"
    assert customer.livemode is False
    assert before <= customer.created <= time.time()  # stamped when created, in Unix seconds
    assert (customer.name, customer.email) == ("Asha Rao", "asha@example.com")
    assert customer.metadata is not None and customer.metadata["organization_id"] == "42"
    assert client.v1.customers.retrieve(customer.id).email == "asha@example.com"

    create = fake.requests_to("/v1/customers", "POST")[0]
    assert create.params == {"name": "Asha Rao", "email": "asha@example.com", "metadata": {"organization_id": "42"}}
    assert create.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert create.idempotency_key  # the library sends one on every POST


def test_unknown_customer_is_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.retrieve("cus_nope")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.user_message == "No such customer: 'cus_nope'"


def test_unknown_parameter_is_rejected(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.create({"nmae": "typo"})  # type: ignore[arg-type, typeddict-unknown-key]
    assert caught.value.code == "parameter_unknown"
    assert caught.value.param == "nmae"


def test_wrong_api_key_is_401_with_stripe_error_shape(fake: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError) as caught:
        client_for(fake, api_key="sk_test_someone_elses_key").v1.customers.create({"name": "x"})
    assert caught.value.http_status == 401
    error = caught.value.json_body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid API Key provided: sk_test_")
    assert "someone_elses" not in error["message"]  # Stripe redacts the key it echoes
    assert fake.customers == {}
    assert fake.requests[-1].headers["Authorization"] == "Bearer sk_test_someone_elses_key"


def test_module_level_api_base_style(fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "api_key", API_KEY)
    monkeypatch.setattr(stripe, "api_base", fake.api_base)
    customer = stripe.Customer.create(name="Module Style")
    assert customer.id in fake.customers
    assert stripe.Customer.retrieve(customer.id).name == "Module Style"


# stripe's httpx client passes the form body as data=, which httpx deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
async def test_async_client_against_async_context() -> None:
    async with FakeStripe(api_key=API_KEY) as fake:
        client = client_for(fake)
        customer = await client.v1.customers.create_async({"name": "Async"})
        fetched = await client.v1.customers.retrieve_async(customer.id)
    assert fetched.name == "Async"


# --- meters and meter events --------------------------------------------------------------------


def test_meter_create_and_list(fake: FakeStripe, client: stripe.StripeClient) -> None:
    minutes = create_meter(client, "call_minutes")
    seconds = create_meter(client, "stt_seconds")

    assert minutes.id.startswith("mtr_test_")
    assert minutes.object == "billing.meter"
    assert minutes.status == "active"
    assert minutes.default_aggregation.formula == "sum"
    assert minutes.customer_mapping.to_dict() == {"event_payload_key": "stripe_customer_id", "type": "by_id"}
    assert minutes.value_settings.event_payload_key == "value"

    listed = client.v1.billing.meters.list()
    assert listed["object"] == "list"
    assert [m.id for m in listed.data] == [seconds.id, minutes.id]  # newest first
    assert listed.has_more is False
    assert [m.id for m in client.v1.billing.meters.list({"limit": 1}).auto_paging_iter()] == [seconds.id, minutes.id]

    with pytest.raises(stripe.InvalidRequestError) as caught:
        create_meter(client, "call_minutes")  # one active meter per event name
    assert caught.value.param == "event_name"


def test_meter_event_accepted_then_duplicate_identifier_rejected(fake: FakeStripe, client: stripe.StripeClient) -> None:
    create_meter(client)
    customer = client.v1.customers.create({"name": "Asha"})
    params: Any = {
        "event_name": "call_minutes",
        "payload": {"stripe_customer_id": customer.id, "value": "3"},
        "identifier": "call-123-minutes",
        "timestamp": int(time.time()) - 60,
    }

    accepted = client.v1.billing.meter_events.create(params)
    assert accepted.object == "billing.meter_event"
    assert accepted.identifier == "call-123-minutes"
    assert accepted.payload.to_dict() == {"stripe_customer_id": customer.id, "value": "3"}
    assert accepted.livemode is False

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create(params)  # a fresh Idempotency-Key: only the identifier repeats
    error = caught.value
    assert error.http_status == 400
    assert error.user_message == "An event already exists with identifier call-123-minutes."
    assert error.code is None
    assert error.json_body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert error.headers["Stripe-Should-Retry"] == "false"  # type: ignore[index]
    assert [e["identifier"] for e in fake.meter_events] == ["call-123-minutes"]


def test_meter_event_timestamp_limits(client: stripe.StripeClient) -> None:
    for offset, message in ((-36 * 86_400, "35 days in the past"), (600, "5 minutes in the future")):
        with pytest.raises(stripe.InvalidRequestError, match=message):
            client.v1.billing.meter_events.create(
                {
                    "event_name": "call_minutes",
                    "payload": {"stripe_customer_id": "cus_x", "value": "1"},
                    "timestamp": int(time.time()) + offset,
                }
            )


def test_event_summaries_sum_accepted_events_in_range(fake: FakeStripe, client: stripe.StripeClient) -> None:
    meter = create_meter(client)
    create_meter(client, "other_meter")
    asha = client.v1.customers.create({"name": "Asha"})
    ravi = client.v1.customers.create({"name": "Ravi"})
    start = minute_floor(time.time()) - 3600
    end = start + 3600

    def report(customer: str, value: str, ts: int, event_name: str = "call_minutes") -> None:
        client.v1.billing.meter_events.create(
            {"event_name": event_name, "payload": {"stripe_customer_id": customer, "value": value}, "timestamp": ts}
        )

    report(asha.id, "3", start)  # start is inclusive
    report(asha.id, "4", end - 1)
    report(asha.id, "100", end)  # end is exclusive
    report(asha.id, "50", start - 1)
    report(ravi.id, "7", start + 10)  # another customer
    report(asha.id, "9", start + 10, event_name="other_meter")  # another meter
    report(asha.id, "not-a-number", start + 20)  # accepted, never counted (Stripe's async error report)

    summaries = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": asha.id, "start_time": start, "end_time": end}
    )
    assert summaries["object"] == "list"
    [summary] = summaries.data
    assert summary.object == "billing.meter_event_summary"
    assert summary.id.startswith("mtrusg_test_")
    assert (summary.aggregated_value, summary.start_time, summary.end_time) == (7.0, start, end)
    assert summary.meter == meter.id
    assert fake.meter_summary(meter.id, ravi.id, start, end) == 7.0

    hourly = client.v1.billing.meters.event_summaries.list(
        meter.id,
        {"customer": asha.id, "start_time": start - 3600, "end_time": end, "value_grouping_window": "hour"},
    )
    assert sum(s.aggregated_value for s in hourly.data) == 57.0
    assert all(s.end_time - s.start_time <= 3600 for s in hourly.data)

    with pytest.raises(stripe.InvalidRequestError, match="minute boundaries"):
        client.v1.billing.meters.event_summaries.list(
            meter.id, {"customer": asha.id, "start_time": start + 1, "end_time": end}
        )


# --- checkout ----------------------------------------------------------------------------------


def test_checkout_session_create(fake: FakeStripe, client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create({"name": "Asha"})
    session = client.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "inr",
                        "unit_amount": 50_000,
                        "product_data": {"name": "CallMissed credits"},
                    },
                    "quantity": 2,
                }
            ],
            "customer": customer.id,
            "success_url": "https://app.example/billing/success",
            "cancel_url": "https://app.example/billing/cancel",
            "metadata": {"organization_id": "42", "credits": "1000"},
            "client_reference_id": "org-42",
        }
    )

    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert session.url == f"https://checkout.stripe.com/c/pay/{session.id}"
    assert (session.payment_status, session.status) == ("unpaid", "open")
    assert (session.amount_total, session.currency) == (100_000, "inr")
    assert (session.customer, session.client_reference_id) == (customer.id, "org-42")
    assert session.metadata is not None and session.metadata.to_dict() == {"organization_id": "42", "credits": "1000"}
    sent = fake.requests_to("/v1/checkout/sessions", "POST")[0].params
    assert sent["line_items"][0]["price_data"]["product_data"] == {"name": "CallMissed credits"}

    event = fake.complete_checkout_session(session.id)
    assert event["type"] == "checkout.session.completed"
    assert event["data"]["object"]["payment_status"] == "paid"
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"


def test_checkout_session_needs_quantity(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [
                    {"price_data": {"currency": "inr", "unit_amount": 100, "product_data": {"name": "Credits"}}}
                ],
            }
        )
    assert (caught.value.code, caught.value.param) == ("parameter_missing", "line_items[0][quantity]")


# --- idempotency and faults --------------------------------------------------------------------


def test_idempotent_replay_and_conflict(fake: FakeStripe, client: stripe.StripeClient) -> None:
    first = client.v1.customers.create({"name": "Asha"}, {"idempotency_key": "org-42-customer"})
    again = client.v1.customers.create({"name": "Asha"}, {"idempotency_key": "org-42-customer"})

    assert again.id == first.id
    assert len(fake.customers) == 1
    assert again.last_response is not None and first.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers

    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.customers.create({"name": "Someone else"}, {"idempotency_key": "org-42-customer"})
    assert caught.value.http_status == 400
    assert caught.value.json_body["error"]["type"] == "idempotency_error"  # type: ignore[index]
    assert len(fake.customers) == 1


def test_injected_500_then_retry_succeeds(fake: FakeStripe) -> None:
    create_meter(client_for(fake))
    fake.fail_next("/v1/billing/meter_events", status=500)

    event = client_for(fake, retries=2).v1.billing.meter_events.create(
        {"event_name": "call_minutes", "payload": {"stripe_customer_id": "cus_x", "value": "5"}, "identifier": "i-1"}
    )

    assert event.identifier == "i-1"
    attempts = fake.requests_to("/v1/billing/meter_events")
    assert len(attempts) == 2
    assert attempts[0].idempotency_key == attempts[1].idempotency_key
    assert len(fake.meter_events) == 1


def test_injected_500_without_retries_raises_api_error(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.fail_next("/v1/customers", status=500)
    with pytest.raises(stripe.APIError) as caught:
        client.v1.customers.create({"name": "x"})
    assert caught.value.http_status == 500
    assert client.v1.customers.create({"name": "x"}).id in fake.customers  # the fault was used up


def test_injected_429_is_a_rate_limit_error_the_library_does_not_retry(fake: FakeStripe) -> None:
    fake.fail_next("/v1/customers", status=429)
    with pytest.raises(stripe.RateLimitError):
        client_for(fake, retries=2).v1.customers.create({"name": "x"})
    assert len(fake.requests_to("/v1/customers")) == 1

    fake.fail_next("/v1/customers", status=429, should_retry=True)  # e.g. Stripe's lock_timeout
    assert client_for(fake, retries=2).v1.customers.create({"name": "x"}).id in fake.customers


def test_dropped_connection_after_processing_is_answered_by_the_replay(fake: FakeStripe) -> None:
    fake.drop_connection_next("/v1/billing/meter_events")

    event = client_for(fake, retries=2).v1.billing.meter_events.create(
        {"event_name": "call_minutes", "payload": {"stripe_customer_id": "cus_x", "value": "5"}, "identifier": "i-2"}
    )

    assert event.identifier == "i-2"
    assert event.last_response is not None
    assert event.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(fake.requests_to("/v1/billing/meter_events")) == 2
    assert len(fake.meter_events) == 1  # executed once, although the client sent twice


def test_dropped_connection_before_processing(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.drop_connection_next("/v1/customers", processed=False)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "x"})
    assert fake.customers == {}

    fake.drop_connection_next("/v1/customers", processed=True)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "x"})
    assert len(fake.customers) == 1  # Stripe acted, the caller never heard


# --- events ------------------------------------------------------------------------------------


def test_events_list_filters_and_paginates(fake: FakeStripe, client: stripe.StripeClient) -> None:
    base = int(time.time()) - 1000
    pushed = [
        fake.add_event(
            "checkout.session.completed", {"id": f"cs_test_{i}", "object": "checkout.session"}, created=base + i
        )
        for i in range(5)
    ]
    fake.add_event("customer.created", {"id": "cus_1", "object": "customer"}, created=base + 2)

    first = client.v1.events.list({"type": "checkout.session.completed", "limit": 2})
    assert [e.id for e in first.data] == [pushed[4]["id"], pushed[3]["id"]]  # newest first
    assert first.has_more is True
    assert first.data[0].data.object.id == "cs_test_4"
    second = client.v1.events.list(
        {"type": "checkout.session.completed", "limit": 2, "starting_after": first.data[-1].id}
    )
    assert [e.id for e in second.data] == [pushed[2]["id"], pushed[1]["id"]]

    recent = client.v1.events.list({"type": "checkout.session.completed", "created": {"gte": base + 3}})
    assert [e.id for e in recent.data] == [pushed[4]["id"], pushed[3]["id"]]
    assert recent.has_more is False

    everything = client.v1.events.list({"limit": 2}).auto_paging_iter()
    assert len(list(everything)) == 6
    wildcard = client.v1.events.list({"type": "checkout.session.*", "limit": 100})
    assert len(wildcard.data) == 5
    assert client.v1.events.retrieve(pushed[0]["id"]).type == "checkout.session.completed"

    several = client.v1.events.list({"types": ["customer.created", "checkout.session.completed"], "limit": 100})
    assert len(several.data) == 6
    exact = client.v1.events.list({"created": base + 2})
    assert {e.type for e in exact.data} == {"checkout.session.completed", "customer.created"}

    listed = fake.requests_to("/v1/events", "GET")[1].params
    assert listed == {"type": "checkout.session.completed", "limit": "2", "starting_after": pushed[3]["id"]}


# --- webhooks ----------------------------------------------------------------------------------


def test_signed_webhook_is_accepted_by_construct_event() -> None:
    payload = event_payload("checkout.session.completed", {"id": "cs_test_1", "object": "checkout.session"})
    body, header = signed_webhook(payload, WEBHOOK_SECRET)

    event = stripe.Webhook.construct_event(body, header, WEBHOOK_SECRET)
    assert (event.id, event.type) == (payload["id"], "checkout.session.completed")
    assert event.id.startswith("evt_")
    assert event.data.object.id == "cs_test_1"
    assert json.loads(body) == payload
    client_event = stripe.StripeClient("sk_test_x").construct_event(body, header, WEBHOOK_SECRET)
    assert client_event.id == payload["id"]


def test_signed_webhook_rejects_tampering_wrong_secret_and_stale_timestamp() -> None:
    payload = event_payload("checkout.session.completed", {"id": "cs_test_1", "object": "checkout.session"})
    body, header = signed_webhook(payload, WEBHOOK_SECRET)

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"cs_test_1", b"cs_test_2"), header, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, "whsec_other")
    old_body, old_header = signed_webhook(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(old_body, old_header, WEBHOOK_SECRET)


def test_events_older_than_30_days_are_not_listed(fake: FakeStripe, client: stripe.StripeClient) -> None:
    now = int(time.time())
    fake.add_event("checkout.session.completed", {"id": "cs_test_old"}, created=now - 31 * 86_400)
    recent = fake.add_event("checkout.session.completed", {"id": "cs_test_new"}, created=now - 29 * 86_400)

    listed = client.v1.events.list({"created": {"gte": now - 40 * 86_400}})
    assert [e.id for e in listed.data] == [recent["id"]]


# --- the calls billing makes -------------------------------------------------------------------
# Each function of billing/stripe_gateway.py, as billing calls it, through the stripe library
# (its version pinned in requirements.txt is the source for the wire format) against the fake.


@pytest.fixture
def gateway(fake: FakeStripe, settings: Any) -> FakeStripe:
    settings.STRIPE_SECRET_KEY = API_KEY
    settings.STRIPE_API_BASE = fake.api_base
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_METER_EVENT_NAME = "callmissed_contract_usage"
    return fake


def test_every_call_billing_makes_is_answered_by_the_fake(gateway: FakeStripe) -> None:
    customer = stripe_gateway.customer_create(name="Asha Rao", organization_id="42", idempotency_key="org-42")
    assert stripe_gateway.customer_create(name="Asha Rao", organization_id="42", idempotency_key="org-42") == customer
    assert gateway.customers[customer]["metadata"] == {"organization_id": "42"}

    meter = stripe_gateway.meter_id()
    assert gateway.meters[meter]["event_name"] == "callmissed_contract_usage"
    listed = gateway.requests_to("/v1/billing/meters", "GET")[0].params
    assert listed == {"status": "active", "limit": "100"}

    at = datetime.fromtimestamp(time.time() // 60 * 60 - 120, tz=UTC)
    stripe_gateway.meter_event_create(customer_id=customer, identifier="usage-1", value=1500, at=at)
    stripe_gateway.meter_event_create(customer_id=customer, identifier="usage-1", value=1500, at=at)  # resend: no-op
    assert [e["identifier"] for e in gateway.meter_events] == ["usage-1"]
    total = stripe_gateway.meter_total(customer_id=customer, start=at, end=at + timedelta(minutes=2))
    assert total == 1500

    session_id, url = stripe_gateway.checkout_session_create(
        customer_id=customer,
        organization_id="42",
        amount_cents=2500,
        currency="usd",
        success_url="https://app.example/ok",
        cancel_url="https://app.example/cancel",
        idempotency_key="topup-1",
    )
    assert url.endswith(session_id)
    retrieved = stripe_gateway.checkout_session_retrieve(session_id=session_id)
    assert retrieved is not None and retrieved["amount_total"] == 2500
    assert stripe_gateway.checkout_session_retrieve(session_id="cs_test_missing") is None

    event = gateway.complete_checkout_session(session_id)
    since = stripe_gateway.events_since(
        created_gte=datetime.now(tz=UTC) - timedelta(hours=1), types=["checkout.session.completed"]
    )
    assert [e["id"] for e in since] == [event["id"]]

    body, header = signed_webhook(event, WEBHOOK_SECRET)
    assert stripe_gateway.webhook_verify(body=body, signature=header)["id"] == event["id"]
    assert stripe.Webhook.construct_event(body, header, WEBHOOK_SECRET).id == event["id"]
    with pytest.raises(ValueError):
        stripe_gateway.webhook_verify(body=body.replace(b"paid", b"open"), signature=header)

    posts = [r for r in gateway.requests if r.method == "POST"]
    assert posts and all(r.idempotency_key for r in posts)
