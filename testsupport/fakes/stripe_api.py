"""A loopback fake of the Stripe API endpoints CallMissed uses, spoken to by the real ``stripe`` library.

It answers on ``127.0.0.1`` with Stripe's wire format — form-encoded bodies in (``metadata[k]=v``,
``line_items[0][price_data][currency]=inr``), JSON objects out with Stripe's id prefixes, ``object``
names, ``created`` timestamps and ``"livemode": false`` — so billing code runs unmodified::

    with FakeStripe(api_key="sk_test_abc") as fake:        # or: async with FakeStripe(...)
        client = stripe.StripeClient("sk_test_abc", base_addresses={"api": fake.api_base})
        # module-level style works too: stripe.api_key = "sk_test_abc"; stripe.api_base = fake.api_base
        customer = client.v1.customers.create({"name": "Asha"})
        fake.requests[-1].params       # {"name": "Asha"} — every request is recorded, faults included

Endpoints: customers (create, retrieve), billing meters (create, list, retrieve), meter events
(create), meter event summaries (list), checkout sessions (create, retrieve), events (list,
retrieve). Test-side helpers: ``add_event`` (an event for ``GET /v1/events``),
``complete_checkout_session`` (a paid session plus its ``checkout.session.completed`` event),
``signed_webhook``, ``signature_header`` and ``event_payload`` (module functions) for webhook deliveries.

Behaviour copied from Stripe because billing depends on it:

* ``Authorization: Bearer <api_key>`` is required; otherwise 401 with Stripe's error body.
* Unknown top-level parameters are rejected ("Received unknown parameter: …") so a typo fails a
  test instead of being silently dropped.
* ``Idempotency-Key`` (the library sends one on every POST): a repeated key with the same
  parameters replays the saved response with ``Idempotent-Replayed: true``; with other parameters
  or another endpoint it is a 400 ``idempotency_error``. Only executed (2xx) results are saved —
  Stripe does not save results of requests that failed validation.
* Meter event ``identifier`` is unique for 24 hours. A repeat is refused with HTTP 400,
  ``Stripe-Should-Retry: false`` and ``{"error": {"message": "An event already exists with
  identifier <id>.", "type": "invalid_request_error", ...}}`` — no ``code`` field on the v1 API
  (``duplicate_meter_event`` is the v2 API's code). The wording is the one production Stripe
  integrations match on; callers should treat it as "already recorded".
* Meter events are validated like Stripe does synchronously (timestamp no more than 35 days past
  nor 5 minutes ahead); a missing meter, customer or value is, as at Stripe, not an error at
  create time — such events are accepted and simply never counted in summaries.
* ``GET /v1/events`` lists newest first, only the last 30 days, filtered by ``type``/``types``
  (``*`` wildcards) and ``created[gt|gte|lt|lte]``, paginated with ``starting_after``.
* Event summaries need ``start_time``/``end_time`` on minute boundaries and sum the accepted
  events with ``start_time <= timestamp < end_time`` for the customer, per ``value_grouping_window``.

Faults (each applies to the next matching requests, matched by path prefix, after the request is
recorded and authenticated): ``fail_next(prefix, status=500|429|400…, times=, error_type=,
message=, code=, param=)`` answers a Stripe error without executing;
``drop_connection_next(prefix, processed=True)`` closes the socket without an answer — by
default after executing and saving the idempotent result, i.e. the crash-after-send case where
the library's retry (``max_network_retries``) must be answered by the replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import random
import re
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import stripe
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from testsupport.fakes._loopback import LoopbackServer

API_VERSION: str = stripe.api_version  # the library's pinned version; events carry it like Stripe's do
_ID_ALPHABET = string.ascii_letters + string.digits
_DAY = 86_400
_IDENTIFIER_UNIQUE_FOR_S = _DAY
_MAX_EVENT_AGE_S = 35 * _DAY
_MAX_EVENT_LEAD_S = 5 * 60
_EVENTS_LISTED_FOR_S = 30 * _DAY  # GET /v1/events only goes back 30 days
# Keys whose values are free-form string maps: their sub-keys are never list indices.
_STRING_MAPS = frozenset({"metadata", "payload"})

Params = dict[str, Any]


# --- wire helpers -------------------------------------------------------------------------------


def decode_form(pairs: list[tuple[str, str]]) -> Params:
    """Rebuild the nested params the stripe library flattened (``a[b][0][c]=v``)."""
    root: Params = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        path = [head, *re.findall(r"([^\[\]]*)\]", "[" + rest)] if rest else [head]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # "a=1&a[b]=2": keep the first shape, like Rails/Stripe
                break
        else:
            last = path[-1]
            if last == "":
                last = str(len(node))
            node[last] = value
    return _lists_from_indexed_dicts(root)


def _lists_from_indexed_dicts(node: Any, key: str = "") -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists_from_indexed_dicts(v, k) for k, v in node.items()}
    if converted and key not in _STRING_MAPS and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(random.choices(_ID_ALPHABET, k=length))


class StripeApiError(Exception):
    """An error answer in Stripe's shape: ``{"error": {"type", "message", "code"?, "param"?}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


def _missing(param: str) -> StripeApiError:
    return StripeApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _invalid(param: str, message: str) -> StripeApiError:
    return StripeApiError(400, message, param=param)


def _no_such(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    return StripeApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def _require(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise _missing(name)
    if not isinstance(value, str):
        raise _invalid(name, f"Invalid string: {name} must be a string")
    return value


def _int(params: Params, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str) or not re.fullmatch(r"-?\d+", raw):
        raise _invalid(name, f"Invalid integer: {raw}")
    return int(raw)


def _check_known(params: Params, allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StripeApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def _string_map(params: Params, name: str) -> dict[str, str]:
    value = params.get(name, {})
    if value == "":  # Stripe unsets a map with an empty string
        return {}
    if not isinstance(value, dict):
        raise _invalid(name, f"Invalid object: {name} must be a hash")
    return {k: str(v) for k, v in value.items()}


# --- recording and faults -----------------------------------------------------------------------


@dataclass(frozen=True)
class StripeRequest:
    """One request as it arrived: decoded params (query for GET, form body for POST)."""

    method: str
    path: str
    params: Params
    headers: Mapping[str, str]
    received_at: float

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


@dataclass
class _Fault:
    path_prefix: str
    remaining: int
    status: int | None = None  # answer with this status, or None to drop the connection
    should_retry: bool | None = None
    processed: bool = True
    error: StripeApiError | None = None  # the exact error to answer, when the test gave one


@dataclass(frozen=True)
class _SavedResponse:
    method: str
    path: str
    params: Params
    status: int
    body: dict[str, Any]
    request_id: str


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., dict[str, Any]]


# --- the fake -----------------------------------------------------------------------------------


_ALLOWED = {
    "customer_create": frozenset(
        {
            "address",
            "balance",
            "description",
            "email",
            "expand",
            "invoice_prefix",
            "invoice_settings",
            "metadata",
            "name",
            "next_invoice_sequence",
            "payment_method",
            "phone",
            "preferred_locales",
            "shipping",
            "tax_exempt",
            "test_clock",
        }
    ),
    "retrieve": frozenset({"expand"}),
    "meter_create": frozenset(
        {
            "customer_mapping",
            "default_aggregation",
            "display_name",
            "event_name",
            "event_time_window",
            "expand",
            "value_settings",
        }
    ),
    "meter_list": frozenset({"ending_before", "expand", "limit", "starting_after", "status"}),
    "meter_event_create": frozenset({"event_name", "expand", "identifier", "payload", "timestamp"}),
    "event_summaries": frozenset(
        {
            "customer",
            "end_time",
            "ending_before",
            "expand",
            "limit",
            "start_time",
            "starting_after",
            "value_grouping_window",
        }
    ),
    "checkout_create": frozenset(
        {
            "adaptive_pricing",
            "after_expiration",
            "allow_promotion_codes",
            "automatic_tax",
            "billing_address_collection",
            "cancel_url",
            "client_reference_id",
            "consent_collection",
            "currency",
            "custom_fields",
            "custom_text",
            "customer",
            "customer_creation",
            "customer_email",
            "customer_update",
            "discounts",
            "expand",
            "expires_at",
            "invoice_creation",
            "line_items",
            "locale",
            "metadata",
            "mode",
            "payment_intent_data",
            "payment_method_configuration",
            "payment_method_options",
            "payment_method_types",
            "phone_number_collection",
            "redirect_on_completion",
            "return_url",
            "saved_payment_method_options",
            "submit_type",
            "success_url",
            "tax_id_collection",
            "ui_mode",
        }
    ),
    "event_list": frozenset(
        {"created", "delivery_success", "ending_before", "expand", "limit", "starting_after", "type", "types"}
    ),
}


class FakeStripe:
    """Stripe's v1 API for customers, meters, meter events, checkout sessions and events.

    State is public for assertions: ``customers``, ``meters``, ``checkout_sessions`` (dicts by id),
    ``meter_events`` (accepted, in arrival order), ``events`` (oldest first) and ``requests``.
    ``clock`` (seconds since the epoch) may be replaced to move the fake's notion of now.
    """

    def __init__(self, *, api_key: str = "sk_test_fake", clock: Callable[[], float] = time.time) -> None:
        self.api_key = api_key
        self._configured_clock = clock
        self._lock = threading.RLock()  # the test thread and the server thread share the state
        self.reset()
        self._routes = [
            _Route("POST", re.compile(r"/v1/customers"), self._customer_create),
            _Route("GET", re.compile(r"/v1/customers/(?P<id>[^/]+)"), self._customer_retrieve),
            _Route("POST", re.compile(r"/v1/billing/meters"), self._meter_create),
            _Route("GET", re.compile(r"/v1/billing/meters"), self._meter_list),
            _Route("GET", re.compile(r"/v1/billing/meters/(?P<id>[^/]+)"), self._meter_retrieve),
            _Route("GET", re.compile(r"/v1/billing/meters/(?P<id>[^/]+)/event_summaries"), self._event_summaries),
            _Route("POST", re.compile(r"/v1/billing/meter_events"), self._meter_event_create),
            _Route("POST", re.compile(r"/v1/checkout/sessions"), self._checkout_create),
            _Route("GET", re.compile(r"/v1/checkout/sessions/(?P<id>[^/]+)"), self._checkout_retrieve),
            _Route("GET", re.compile(r"/v1/events"), self._event_list),
            _Route("GET", re.compile(r"/v1/events/(?P<id>[^/]+)"), self._event_retrieve),
        ]
        self._server = LoopbackServer(self._app)

    def reset(self) -> None:
        """Back to the state the constructor left (its key and clock): no objects, events,
        requests or faults; the server and its port stay, so one fake can serve many tests."""
        with self._lock:
            self.clock = self._configured_clock
            self.customers: dict[str, dict[str, Any]] = {}
            self.meters: dict[str, dict[str, Any]] = {}
            self.meter_events: list[dict[str, Any]] = []
            self.checkout_sessions: dict[str, dict[str, Any]] = {}
            self.events: list[dict[str, Any]] = []
            self.requests: list[StripeRequest] = []
            self._identifiers_seen: dict[str, int] = {}
            self._idempotent: dict[str, _SavedResponse] = {}
            self._faults: list[_Fault] = []
            self._summary_ids = itertools.count()

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """What ``base_addresses={"api": ...}`` or ``stripe.api_base`` should be set to."""
        return f"http://127.0.0.1:{self._server.port}"

    def start(self) -> FakeStripe:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeStripe:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # --- test-side controls ----------------------------------------------------------------------

    def fail_next(
        self,
        path_prefix: str,
        status: int = 500,
        *,
        times: int = 1,
        should_retry: bool | None = None,
        error_type: str | None = None,
        message: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with a Stripe error, unexecuted.

        ``should_retry`` sets ``Stripe-Should-Retry``, which the library obeys over its defaults
        (it retries 409 and 5xx, not 429, unless told to). ``error_type`` (``invalid_request_error``,
        ``idempotency_error``, ``card_error``, ``api_error``…), ``message``, ``code`` and ``param``
        shape the error body exactly; without them a generic error for the status is answered.
        """
        error = None
        if error_type is not None or message is not None or code is not None or param is not None:
            error = StripeApiError(
                status,
                message or f"Injected failure {status}",
                type=error_type or ("api_error" if status >= 500 else "invalid_request_error"),
                code=code,
                param=param,
            )
        with self._lock:
            self._faults.append(_Fault(path_prefix, times, status=status, should_retry=should_retry, error=error))

    def drop_connection_next(self, path_prefix: str, *, times: int = 1, processed: bool = True) -> None:
        """Close the socket of the next ``times`` requests under ``path_prefix`` without answering.

        ``processed=True``: the request is executed (and its idempotent result saved) first — a
        crash after Stripe acted. ``processed=False``: dropped before anything happened.
        """
        with self._lock:
            self._faults.append(_Fault(path_prefix, times, processed=processed))

    def add_event(
        self,
        type: str,
        data_object: Mapping[str, Any],
        *,
        created: int | None = None,
        event_id: str | None = None,
        previous_attributes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an event as Stripe would have emitted it; ``GET /v1/events`` lists it."""
        event = event_payload(
            type,
            data_object,
            event_id=event_id,
            created=created if created is not None else int(self.clock()),
            previous_attributes=previous_attributes,
        )
        with self._lock:
            self.events.append(event)
        return event

    def complete_checkout_session(self, session_id: str, *, payment_intent: str | None = None) -> dict[str, Any]:
        """Mark a session paid, as when the customer pays, and emit ``checkout.session.completed``.

        Returns the event (sign it with ``signed_webhook`` to deliver it as Stripe would).
        """
        with self._lock:
            session = self.checkout_sessions[session_id]
            session.update(
                status="complete",
                payment_status="paid",
                payment_intent=payment_intent or new_id("pi_"),
                url=None,
            )
            snapshot = json.loads(json.dumps(session))
        return self.add_event("checkout.session.completed", snapshot)

    def requests_to(self, path: str, method: str | None = None) -> list[StripeRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def meter_summary(self, meter_id: str, customer: str, start_time: int, end_time: int) -> float:
        """The aggregated value ``event_summaries`` would report (for assertions without a client)."""
        with self._lock:
            return self._aggregate(self.meters[meter_id], customer, start_time, end_time)

    # --- HTTP plumbing -----------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def _dispatch(self, http: web.Request) -> web.StreamResponse:
        raw = (await http.read()).decode("utf-8", errors="replace")
        if http.method == "POST":
            pairs = parse_qsl(raw, keep_blank_values=True)
        else:
            pairs = parse_qsl(http.query_string, keep_blank_values=True)
        params = decode_form(pairs)
        headers_in = CIMultiDictProxy(CIMultiDict(http.headers))  # HTTP header names are case-insensitive
        request = StripeRequest(http.method, http.path, params, headers_in, time.monotonic())
        request_id = new_id("req_", 14)
        drop_after_processing = False
        with self._lock:
            self.requests.append(request)
            try:
                self._authenticate(http.headers)
                fault = self._take_fault(http.path)
                if fault is not None and fault.status is not None:
                    raise self._injected_error(fault)
                if fault is not None and not fault.processed:
                    return self._drop(http)
                drop_after_processing = fault is not None
                status, body, headers = self._respond(request, request_id)
            except StripeApiError as error:
                status, body, headers = error.status, error.body(request_id), error.headers
        if drop_after_processing:  # executed and saved; now "crash" before the answer leaves
            return self._drop(http)
        headers = {"Request-Id": request_id, "Stripe-Version": API_VERSION, **headers}
        if request.idempotency_key:
            headers["Idempotency-Key"] = request.idempotency_key
        return web.json_response(body, status=status, headers=headers)

    @staticmethod
    def _drop(http: web.Request) -> web.StreamResponse:
        if http.transport is not None:
            http.transport.abort()
        return web.Response(status=500)  # never reaches the client: the socket is gone

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        authorization = headers.get("Authorization", "")
        if not authorization:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization "
                "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        scheme, _, key = authorization.partition(" ")
        if scheme != "Bearer" or key != self.api_key:
            shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else key
            raise StripeApiError(401, f"Invalid API Key provided: {shown}")

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if path.startswith(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _injected_error(fault: _Fault) -> StripeApiError:
        headers = {} if fault.should_retry is None else {"Stripe-Should-Retry": str(fault.should_retry).lower()}
        if fault.error is not None:
            error = fault.error
            return StripeApiError(
                error.status, error.message, type=error.type, code=error.code, param=error.param, headers=headers
            )
        if fault.status == 429:
            return StripeApiError(
                429,
                "Request rate limit exceeded. You can learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
                headers=headers,
            )
        assert fault.status is not None
        if fault.status >= 500:
            return StripeApiError(
                fault.status,
                "An unknown error occurred. Please try again.",
                type="api_error",
                headers=headers,
            )
        return StripeApiError(fault.status, f"Injected failure {fault.status}", headers=headers)

    def _respond(self, request: StripeRequest, request_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        route, match = self._route(request)
        key = request.idempotency_key if request.method == "POST" else None
        if key:
            saved = self._idempotent.get(key)
            if saved is not None:
                return self._replay(saved, request, key)
        body = route.handler(request.params, **match.groupdict())
        if key:
            self._idempotent[key] = _SavedResponse(request.method, request.path, request.params, 200, body, request_id)
        return 200, body, {}

    def _route(self, request: StripeRequest) -> tuple[_Route, re.Match[str]]:
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is not None and route.method == request.method:
                return route, match
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({request.method}: {request.path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    @staticmethod
    def _replay(saved: _SavedResponse, request: StripeRequest, key: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        if (saved.method, saved.path) != (request.method, request.path):
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{saved.method} {saved.path}' vs '{request.method} {request.path}'). Try using a key other "
                f"than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        if saved.params != request.params:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        return saved.status, saved.body, {"Idempotent-Replayed": "true", "Original-Request": saved.request_id}

    # --- customers ---------------------------------------------------------------------------------

    def _customer_create(self, params: Params) -> dict[str, Any]:
        _check_known(params, _ALLOWED["customer_create"])
        customer_id = new_id("cus_", 14)
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(self.clock()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": params.get("description") or None,
            "discount": None,
            "email": params.get("email") or None,
            "invoice_prefix": "".join(random.choices(string.ascii_uppercase + string.digits, k=8)),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": _string_map(params, "metadata"),
            "name": params.get("name") or None,
            "next_invoice_sequence": 1,
            "phone": params.get("phone") or None,
            "preferred_locales": list(params.get("preferred_locales") or []),
            "shipping": None,
            "tax_exempt": params.get("tax_exempt") or "none",
            "test_clock": None,
        }
        self.customers[customer_id] = customer
        return customer

    def _customer_retrieve(self, params: Params, id: str) -> dict[str, Any]:
        _check_known(params, _ALLOWED["retrieve"])
        if id not in self.customers:
            raise _no_such("customer", id)
        return self.customers[id]

    # --- billing meters ----------------------------------------------------------------------------

    def _meter_create(self, params: Params) -> dict[str, Any]:
        _check_known(params, _ALLOWED["meter_create"])
        display_name = _require(params, "display_name")
        event_name = _require(params, "event_name")
        aggregation = params.get("default_aggregation")
        if not isinstance(aggregation, dict) or not aggregation.get("formula"):
            raise _missing("default_aggregation[formula]")
        if aggregation["formula"] not in {"sum", "count", "last"}:
            raise StripeApiError(
                400,
                "Invalid default_aggregation[formula]: must be one of count, last, or sum",
                code="parameter_invalid_string",
                param="default_aggregation[formula]",
            )
        mapping = params.get("customer_mapping") or {"type": "by_id", "event_payload_key": "stripe_customer_id"}
        if not isinstance(mapping, dict) or mapping.get("type") != "by_id" or not mapping.get("event_payload_key"):
            raise _invalid("customer_mapping", "customer_mapping needs type=by_id and an event_payload_key")
        value_settings = params.get("value_settings") or {"event_payload_key": "value"}
        if not isinstance(value_settings, dict) or not value_settings.get("event_payload_key"):
            raise _missing("value_settings[event_payload_key]")
        if any(m["event_name"] == event_name and m["status"] == "active" for m in self.meters.values()):
            raise StripeApiError(
                400,
                f"An active meter with event_name `{event_name}` already exists.",
                param="event_name",
            )
        now = int(self.clock())
        meter_id = new_id("mtr_test_", 32)
        meter = {
            "id": meter_id,
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": mapping["event_payload_key"],
                "type": "by_id",
            },
            "default_aggregation": {"formula": aggregation["formula"]},
            "display_name": display_name,
            "event_name": event_name,
            "event_time_window": params.get("event_time_window") or None,
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_settings["event_payload_key"]},
        }
        self.meters[meter_id] = meter
        return meter

    def _meter_list(self, params: Params) -> dict[str, Any]:
        _check_known(params, _ALLOWED["meter_list"])
        status = params.get("status")
        # Stripe lists newest first.
        meters = [m for m in reversed(self.meters.values()) if status in (None, "", m["status"])]
        return _paginate(meters, params, "/v1/billing/meters")

    def _meter_retrieve(self, params: Params, id: str) -> dict[str, Any]:
        _check_known(params, _ALLOWED["retrieve"])
        if id not in self.meters:
            raise _no_such("billing.meter", id)
        return self.meters[id]

    # --- meter events ------------------------------------------------------------------------------

    def _meter_event_create(self, params: Params) -> dict[str, Any]:
        _check_known(params, _ALLOWED["meter_event_create"])
        event_name = _require(params, "event_name")
        if "payload" not in params:
            raise _missing("payload")
        payload = _string_map(params, "payload")
        now = int(self.clock())
        timestamp = _int(params, "timestamp", now)
        assert timestamp is not None
        if timestamp < now - _MAX_EVENT_AGE_S:
            raise StripeApiError(400, "Timestamp must be no more than 35 days in the past.", param="timestamp")
        if timestamp > now + _MAX_EVENT_LEAD_S:
            raise StripeApiError(400, "Timestamp must be no more than 5 minutes in the future.", param="timestamp")
        identifier = params.get("identifier") or new_id("", 36)
        first_seen = self._identifiers_seen.get(identifier)
        if first_seen is not None and now - first_seen < _IDENTIFIER_UNIQUE_FOR_S:
            raise StripeApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                headers={"Stripe-Should-Retry": "false"},
            )
        self._identifiers_seen[identifier] = now
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": timestamp,
        }
        self.meter_events.append(event)
        return event

    def _event_summaries(self, params: Params, id: str) -> dict[str, Any]:
        _check_known(params, _ALLOWED["event_summaries"])
        meter = self.meters.get(id)
        if meter is None:
            raise _no_such("billing.meter", id)
        customer = _require(params, "customer")
        start_time = _int(params, "start_time")
        end_time = _int(params, "end_time")
        if start_time is None:
            raise _missing("start_time")
        if end_time is None:
            raise _missing("end_time")
        for name, value in (("start_time", start_time), ("end_time", end_time)):
            if value % 60:
                raise StripeApiError(400, f"{name} must be aligned with minute boundaries.", param=name)
        if end_time <= start_time:
            raise StripeApiError(400, "end_time must be after start_time.", param="end_time")
        if customer not in self.customers:
            raise _no_such("customer", customer, param="customer")
        window = params.get("value_grouping_window") or None
        if window not in (None, "hour", "day"):
            raise StripeApiError(
                400, "Invalid value_grouping_window: must be one of day or hour", param="value_grouping_window"
            )
        bounds = _windows(start_time, end_time, window)
        summaries = [
            {
                "id": f"mtrusg_test_{next(self._summary_ids):06d}{new_id('', 40)}",
                "object": "billing.meter_event_summary",
                "aggregated_value": self._aggregate(meter, customer, lo, hi),
                "end_time": hi,
                "livemode": False,
                "meter": meter["id"],
                "start_time": lo,
            }
            for lo, hi in bounds
        ]
        return _paginate(summaries, params, f"/v1/billing/meters/{id}/event_summaries")

    def _aggregate(self, meter: Mapping[str, Any], customer: str, start_time: int, end_time: int) -> float:
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        values: list[float] = []
        for event in self.meter_events:
            if (
                event["event_name"] != meter["event_name"]
                or event["payload"].get(customer_key) != customer
                or not start_time <= event["timestamp"] < end_time
            ):
                continue
            if meter["default_aggregation"]["formula"] == "count":
                values.append(1.0)
                continue
            try:
                value = float(event["payload"][value_key])
            except (KeyError, ValueError):
                continue  # Stripe drops these asynchronously (meter error report), never counts them
            if math.isfinite(value):
                values.append(value)
        if meter["default_aggregation"]["formula"] == "last":
            return values[-1] if values else 0.0
        return float(sum(values))

    # --- checkout sessions -------------------------------------------------------------------------

    def _checkout_create(self, params: Params) -> dict[str, Any]:
        _check_known(params, _ALLOWED["checkout_create"])
        mode = params.get("mode") or None
        if mode is None:
            raise _missing("mode")
        if mode not in {"payment", "setup", "subscription"}:
            raise StripeApiError(400, "Invalid mode: must be one of payment, setup, or subscription", param="mode")
        customer = params.get("customer") or None
        if customer is not None and customer not in self.customers:
            raise _no_such("customer", customer, param="customer")
        line_items = params.get("line_items") or []
        if mode == "payment" and not line_items:
            raise _missing("line_items")
        if not isinstance(line_items, list):
            raise _invalid("line_items", "Invalid array")
        currency: str | None = None
        amount_total = 0
        for index, item in enumerate(line_items):
            prefix = f"line_items[{index}]"
            if not isinstance(item, dict):
                raise _invalid(prefix, "Invalid hash")
            price_data = item.get("price_data")
            if "price" in item:
                raise _no_such("price", str(item["price"]), param=f"{prefix}[price]")
            if not isinstance(price_data, dict):
                raise StripeApiError(400, f"You must specify either `price` or `price_data` in {prefix}.", param=prefix)
            item_currency = _require(price_data, "currency").lower() if price_data.get("currency") else None
            if item_currency is None:
                raise _missing(f"{prefix}[price_data][currency]")
            unit_amount = _int(price_data, "unit_amount")
            if unit_amount is None:
                raise _missing(f"{prefix}[price_data][unit_amount]")
            product_data = price_data.get("product_data")
            if "product" not in price_data and not (isinstance(product_data, dict) and product_data.get("name")):
                raise _missing(f"{prefix}[price_data][product_data][name]")
            quantity = _int(item, "quantity")
            if quantity is None:
                raise _missing(f"{prefix}[quantity]")
            if currency is not None and item_currency != currency:
                raise StripeApiError(400, "All line items must have the same currency.", param="line_items")
            currency = item_currency
            amount_total += unit_amount * quantity
        now = int(self.clock())
        session_id = new_id("cs_test_a1", 56)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "cancel_url": params.get("cancel_url") or None,
            "client_reference_id": params.get("client_reference_id") or None,
            "created": now,
            "currency": currency,
            "customer": customer,
            "customer_email": params.get("customer_email") or None,
            "expires_at": _int(params, "expires_at", now + _DAY),
            "livemode": False,
            "metadata": _string_map(params, "metadata"),
            "mode": mode,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url") or None,
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.checkout_sessions[session_id] = session
        return session

    def _checkout_retrieve(self, params: Params, id: str) -> dict[str, Any]:
        _check_known(params, _ALLOWED["retrieve"])
        if id not in self.checkout_sessions:
            raise _no_such("checkout.session", id)
        return self.checkout_sessions[id]

    # --- events ------------------------------------------------------------------------------------

    def _event_list(self, params: Params) -> dict[str, Any]:
        _check_known(params, _ALLOWED["event_list"])
        wanted: set[str] = set()
        if params.get("type"):
            wanted.add(str(params["type"]))
        types = params.get("types") or []
        if isinstance(types, list):
            wanted.update(str(t) for t in types)
        created = params.get("created")
        bounds: dict[str, int] = {}
        if isinstance(created, dict):
            for op, raw in created.items():
                value = _int(created, op)
                if op not in {"gt", "gte", "lt", "lte"} or value is None:
                    raise _invalid(f"created[{op}]", f"Invalid created[{op}]: {raw}")
                bounds[op] = value
        elif created not in (None, ""):
            exact = _int(params, "created")
            assert exact is not None
            bounds = {"gte": exact, "lte": exact}

        oldest_listed = int(self.clock()) - _EVENTS_LISTED_FOR_S

        def keep(event: Mapping[str, Any]) -> bool:
            if event["created"] < oldest_listed:
                return False
            if wanted and not any(_type_matches(event["type"], pattern) for pattern in wanted):
                return False
            ts = event["created"]
            return (
                ts > bounds.get("gt", ts - 1)
                and ts >= bounds.get("gte", ts)
                and ts < bounds.get("lt", ts + 1)
                and ts <= bounds.get("lte", ts)
            )

        # Newest first, like Stripe; events pushed in the same second keep push order reversed.
        ordered = sorted(enumerate(self.events), key=lambda pair: (pair[1]["created"], pair[0]), reverse=True)
        return _paginate([e for _, e in ordered if keep(e)], params, "/v1/events")

    def _event_retrieve(self, params: Params, id: str) -> dict[str, Any]:
        _check_known(params, _ALLOWED["retrieve"])
        for event in self.events:
            if event["id"] == id:
                return event
        raise _no_such("event", id)


def _type_matches(event_type: str, pattern: str) -> bool:
    """Stripe's ``type`` filter accepts ``*`` wildcards (``checkout.session.*``)."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", "[^.]*"), event_type) is not None


def _windows(start_time: int, end_time: int, window: str | None) -> list[tuple[int, int]]:
    if window is None:
        return [(start_time, end_time)]
    size = 3600 if window == "hour" else _DAY
    bounds = []
    lo = start_time
    while lo < end_time:
        hi = min((lo // size + 1) * size, end_time)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _paginate(items: list[dict[str, Any]], params: Params, url: str) -> dict[str, Any]:
    limit = _int(params, "limit", 10)
    assert limit is not None
    if not 1 <= limit <= 100:
        raise StripeApiError(400, f"This value must be between 1 and 100 (it currently is {limit}).", param="limit")
    starting_after = params.get("starting_after") or None
    ending_before = params.get("ending_before") or None
    ids = [item.get("id") for item in items]
    if starting_after is not None:
        if starting_after not in ids:
            raise _no_such("object", starting_after, param="starting_after")
        page_from = ids.index(starting_after) + 1
        page = items[page_from : page_from + limit]
        has_more = page_from + limit < len(items)
    elif ending_before is not None:
        if ending_before not in ids:
            raise _no_such("object", ending_before, param="ending_before")
        page_to = ids.index(ending_before)
        page = items[max(page_to - limit, 0) : page_to]
        has_more = page_to - limit > 0
    else:
        page = items[:limit]
        has_more = len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


# --- webhooks -----------------------------------------------------------------------------------


def event_payload(
    type: str,
    data_object: Mapping[str, Any],
    event_id: str | None = None,
    created: int | None = None,
    *,
    previous_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A v1 (snapshot) Event object as Stripe sends it to webhook endpoints and lists it."""
    data: dict[str, Any] = {"object": dict(data_object)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    return {
        "id": event_id or new_id("evt_", 24),
        "object": "event",
        "api_version": API_VERSION,
        "created": created if created is not None else int(time.time()),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }


def signed_webhook(payload: Mapping[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and ``Stripe-Signature`` header of a webhook delivery of ``payload``.

    Stripe signs ``"<t>.<raw body>"`` with HMAC-SHA256 keyed by the endpoint secret (the whole
    ``whsec_…`` string) and sends ``t=<t>,v1=<hex digest>``.
    """
    body = json.dumps(payload, indent=2).encode("utf-8")
    return body, signature_header(body, secret, timestamp)


def signature_header(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``body`` exactly as given (JSON or not)."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode("utf-8"), f"{signed_at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={signed_at},v1={digest}"
