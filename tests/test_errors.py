"""Every error, whatever raised it, leaves as the one envelope with a request id."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from testsupport.envelope import assert_envelope

pytestmark = pytest.mark.django_db


def test_unknown_api_path_is_json_404(api: Any) -> None:
    assert_envelope(api.get("/v1/does-not-exist"), 404, "not_found")


def test_unknown_path_404_even_with_debug(api: Any, settings: Any) -> None:
    settings.DEBUG = True
    assert_envelope(api.get("/v1/voice/nothing/here"), 404, "not_found")


def test_method_not_allowed_is_405(api: Any) -> None:
    assert_envelope(api.put("/v1/voice/sessions"), 405, "method_not_allowed")


def test_caller_supplied_request_id_is_echoed(api: Any) -> None:
    response = api.get("/v1/nope", HTTP_X_REQUEST_ID="trace-1234567890")
    assert response["X-Request-ID"] == "trace-1234567890"
    assert response.json()["error"]["request_id"] == "trace-1234567890"


def test_unsafe_request_id_is_replaced() -> None:
    response = APIClient().get("/v1/nope", HTTP_X_REQUEST_ID="<script>")
    assert response["X-Request-ID"].startswith("req_")


def test_unexpected_failure_is_500_envelope_without_internals(api: Any, monkeypatch: Any) -> None:
    from voice import selectors

    def explode(**kwargs: Any) -> None:
        raise RuntimeError("database password is hunter2")

    # The failure is injected below our views to show what a caller sees when anything breaks.
    monkeypatch.setattr(selectors, "voice_session_list", explode)
    error = assert_envelope(api.get("/v1/voice/sessions"), 500, "internal_error")
    assert "hunter2" not in error["message"]


@pytest.mark.parametrize("status", [429, 503])
def test_a_429_or_503_always_says_when_to_retry(api: Any, monkeypatch: Any, status: int) -> None:
    from callmissed.errors import ConcurrencyLimit, ServiceUnavailable
    from voice import selectors

    error_class = ConcurrencyLimit if status == 429 else ServiceUnavailable

    def refuse(**kwargs: Any) -> None:
        raise error_class()  # no retry_after: the handler still sends one

    monkeypatch.setattr(selectors, "voice_session_list", refuse)
    response = api.get("/v1/voice/sessions")
    assert response.status_code == status
    assert int(response["Retry-After"]) >= 1
