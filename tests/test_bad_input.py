"""Hostile input at the REST API's edge is a 4xx in the envelope, never a 500 from deep inside.

One section per class of input that used to reach the parser or PostgreSQL and come back as a
500: numbers out of range, NUL and lone surrogates, forged cursors, dates out of range, bodies
too large or too deep, malformed headers and content types, and malformed query strings.
"""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest

from callmissed.errors import PayloadTooLarge
from callmissed.parsers import StrictJSONParser
from testsupport.envelope import assert_envelope
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"
MAX_SAFE_INTEGER = 2**53 - 1


def _post(client: Any, body: bytes, path: str = SESSIONS, **extra: Any) -> Any:
    return client.generic("POST", path, body, content_type="application/json", **extra)


def _cursor(**tokens: str) -> str:
    """A cursor encoded the way DRF encodes its own: base64 of a query string."""
    return base64.b64encode(urlencode(tokens).encode()).decode()


# --- JSON numbers out of range ---------------------------------------------------------------


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400 + b".0"])
def test_a_number_that_overflows_to_infinity_is_refused_by_the_parser(api: Any, number: bytes) -> None:
    error = assert_envelope(_post(api, b'{"metadata": {"k": ' + number + b"}}"), 400, "invalid_request")
    assert "out of range" in error["message"]


@pytest.mark.parametrize("number", [MAX_SAFE_INTEGER + 1, -(MAX_SAFE_INTEGER + 1), 2**64, 10**30, 1e308])
def test_metadata_numbers_must_be_exact_in_every_json_client(api: Any, number: int | float) -> None:
    error = assert_envelope(_post(api, json.dumps({"metadata": {"k": number}}).encode()), 400, "validation_error")
    assert "between" in error["fields"]["metadata"][0]


def test_the_largest_json_safe_integer_is_stored_and_returned_exactly(api: Any) -> None:
    response = _post(api, json.dumps({"metadata": {"big": MAX_SAFE_INTEGER, "small": -MAX_SAFE_INTEGER}}).encode())
    assert response.status_code == 201, response.content
    assert response.json()["metadata"] == {"big": MAX_SAFE_INTEGER, "small": -MAX_SAFE_INTEGER}


@pytest.mark.parametrize("value", ["1e400", "NaN", "-Infinity"])
def test_a_metadata_filter_that_parses_as_a_non_finite_number_matches_as_text(api: Any, value: str) -> None:
    session = VoiceSessionFactory.create(organization=api.org, metadata={"k": value})
    response = api.get(SESSIONS, {"metadata.k": value})
    assert response.status_code == 200, response.content
    assert [s["id"] for s in response.json()["results"]] == [str(session.id)]


# --- NUL characters and lone surrogates ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"k": "a\\u0000b"}}',
        b'{"metadata": {"k": "\\ud800"}}',
        b'{"metadata": {"a\\u0000": 1}}',
        b'{"metadata": {"\\udfff": "x"}}',
    ],
)
def test_nul_and_lone_surrogates_in_metadata_are_refused(api: Any, body: bytes) -> None:
    assert_envelope(_post(api, body), 400, "invalid_request")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("metadata.k=%00", "metadata.k"),
        ("status=%00", "status"),
        ("created_after=2026-01-01T00:00:00%00", "created_after"),
        ("cursor=%00", "cursor"),
        ("metadata.%00=1", "metadata.\\x00"),
    ],
)
def test_nul_in_a_query_parameter_is_a_400_naming_it(api: Any, query: str, field: str) -> None:
    error = assert_envelope(api.get(f"{SESSIONS}?{query}"), 400, "invalid_request")
    assert field in error["fields"]


def test_nul_in_a_query_parameter_is_refused_on_every_api_path(api: Any) -> None:
    error = assert_envelope(api.get("/v1/usage?start=%00"), 400, "invalid_request")
    assert "start" in error["fields"]


# --- Forged cursors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(p="not-a-date"),
        _cursor(p="0001-01-01 00:00:00+14:00"),
        _cursor(p="9999-12-31 23:59:59-14:00"),
        _cursor(p="2026-01-01 00:00:00"),  # naive: never issued by us
        _cursor(o="-1"),
        _cursor(r="yes"),
        "!!!not base64",
    ],
)
def test_a_forged_cursor_is_a_400_on_cursor(api: Any, cursor: str) -> None:
    error = assert_envelope(api.get(SESSIONS, {"cursor": cursor}), 400, "validation_error")
    assert list(error["fields"]) == ["cursor"]


def test_a_cursor_with_a_huge_offset_is_served_not_refused(api: Any) -> None:
    VoiceSessionFactory.create(organization=api.org)
    response = api.get(SESSIONS, {"cursor": _cursor(o=str(10**30), p="2026-01-01 00:00:00+00:00")})
    assert response.status_code == 200, response.content
    assert response.json()["results"] == []


def test_pages_still_follow_their_next_links(api: Any) -> None:
    ids = {str(VoiceSessionFactory.create(organization=api.org).id) for _ in range(3)}
    seen: list[str] = []
    url: str | None = f"{SESSIONS}?limit=2"
    while url:
        body = api.get(url).json()
        seen += [s["id"] for s in body["results"]]
        url = body["next"]
    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize("limit", ["0", "101", "x"])
def test_a_limit_outside_1_to_100_is_a_400(api: Any, limit: str) -> None:
    error = assert_envelope(api.get(SESSIONS, {"limit": limit}), 400, "validation_error")
    assert "limit" in error["fields"]


# --- Dates out of range ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/usage?start=9999-12-31&end=9999-12-31", "end"),
        ("/v1/usage?end=9999-12-31", "end"),
        (f"{SESSIONS}?created_after=9999-12-31T23:59:59-14:00", "created_after"),
        (f"{SESSIONS}?created_before=0001-01-01T00:00:00%2B14:00", "created_before"),
    ],
)
def test_a_date_at_the_edge_of_the_calendar_is_a_400(api: Any, path: str, field: str) -> None:
    error = assert_envelope(api.get(path), 400, "validation_error")
    assert field in error["fields"]


def test_the_first_day_of_the_calendar_is_a_valid_usage_start(api: Any) -> None:
    response = api.get("/v1/usage?start=0001-01-01&end=0001-12-31")
    assert response.status_code == 200, response.content
    assert response.json()["items"] == []


# --- Bodies too large or too deep ------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413(api: Any, settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    body = json.dumps({"system_prompt": "x" * 2000}).encode()
    error = assert_envelope(_post(api, body), 413, "payload_too_large")
    assert "1024" in error["message"]


def test_a_declared_length_over_the_limit_is_a_413_before_the_body_is_read(api: Any, settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    # The test client's payload refuses reads past its two bytes: reading would fail the test.
    assert_envelope(_post(api, b"{}", CONTENT_LENGTH="1073741824"), 413, "payload_too_large")


def test_a_body_without_a_length_is_read_no_further_than_the_limit(settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    stream = io.BytesIO(b"[" + b" " * 10_000_000 + b"]")
    with pytest.raises(PayloadTooLarge):
        StrictJSONParser().parse(stream, "application/json", {"request": SimpleNamespace(META={}), "encoding": None})
    assert stream.tell() == 1025


def test_a_body_just_under_the_limit_is_accepted(api: Any, settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    body = json.dumps({"system_prompt": "x" * 900}).encode()
    assert len(body) < 1024
    assert _post(api, body).status_code == 201


def test_a_huge_stripe_webhook_is_a_413(client: Any, settings: Any) -> None:
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = b'{"id": "' + b"x" * 4096 + b'"}'
    response = _post(client, body, "/v1/billing/stripe/webhook", HTTP_STRIPE_SIGNATURE="t=1,v1=x")
    assert_envelope(response, 413, "payload_too_large")


@pytest.mark.parametrize("depth", [33, 5000, 100_000])
def test_json_nested_too_deep_is_a_400(api: Any, depth: int) -> None:
    body = b'{"metadata": {"k": ' + b"[" * depth + b"]" * depth + b"}}"
    error = assert_envelope(_post(api, body), 400, "invalid_request")
    assert "nested" in error["message"]


# --- Malformed headers and content types ------------------------------------------------------


@pytest.mark.parametrize("key", ["a\x00b", "caf\xc3\xa9", "tab\there"])
def test_an_idempotency_key_outside_printable_ascii_is_a_400(api: Any, key: str) -> None:
    error = assert_envelope(_post(api, b"{}", HTTP_IDEMPOTENCY_KEY=key), 400, "invalid_request")
    assert "Idempotency-Key" in error["fields"]


def test_an_authorization_header_outside_latin_1_is_a_401(api: Any) -> None:
    api.credentials(HTTP_AUTHORIZATION="Bearer cm_\u0100\u2603")
    assert_envelope(api.get(SESSIONS), 401, "unauthenticated")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json; charset=utf-16", "multipart/form-data"])
def test_a_body_that_is_not_utf8_json_is_a_415(api: Any, content_type: str) -> None:
    response = api.generic("POST", SESSIONS, "{}".encode("utf-16"), content_type=content_type)
    assert_envelope(response, 415, "unsupported_media_type")


# --- Malformed requests outside the views ------------------------------------------------------


def test_more_query_fields_than_django_parses_is_a_400(api: Any) -> None:
    query = "&".join(f"f{i}=1" for i in range(1100))
    assert_envelope(api.get(f"{SESSIONS}?{query}"), 400, "invalid_request")


def test_a_disallowed_host_is_the_envelope_even_with_debug_on(api: Any, settings: Any) -> None:
    settings.DEBUG = True
    assert_envelope(api.get(SESSIONS, HTTP_HOST="evil.example"), 400, "invalid_request")
