"""The one error envelope every API error leaves in, as a test checks it."""

from __future__ import annotations

from typing import Any


def assert_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    """``response`` is a ``status`` JSON envelope with ``code``, a message, fields and its request id."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert isinstance(error["fields"], dict)
    assert error["request_id"] == response["X-Request-ID"]
    return dict(error)
