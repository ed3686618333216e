"""Paths whose operations are separate view classes answer and are documented as one resource."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from testsupport.envelope import assert_envelope
from voice.tests.factories import VoiceSessionFactory
from webhooks.tests.support import emit, endpoint_for

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"
WEBHOOKS = "/v1/webhooks"


def _allowed(response: Any) -> set[str]:
    return {method.strip() for method in response["Allow"].split(",")}


def test_each_path_allows_exactly_the_methods_the_schema_documents(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    endpoint = endpoint_for(api.org, "https://hooks.example.com/")
    delivery = emit(api.org)
    ids = {"session_id": session.id, "endpoint_id": endpoint.endpoint.id, "delivery_id": delivery.id}
    schema = api.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path, operations in schema["paths"].items():
        response = api.options(path.format(**ids))
        assert response.status_code == 200, (path, response.content)
        assert _allowed(response) - {"HEAD", "OPTIONS"} == {method.upper() for method in operations}, path


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (SESSIONS, "GET, POST, HEAD, OPTIONS"),
        (f"{SESSIONS}/{{session}}", "GET, DELETE, HEAD, OPTIONS"),
        (WEBHOOKS, "GET, POST, HEAD, OPTIONS"),
        (f"{WEBHOOKS}/{{endpoint}}", "GET, PATCH, DELETE, HEAD, OPTIONS"),
    ],
)
def test_a_method_the_path_does_not_serve_is_405_naming_those_it_does(api: Any, path: str, allowed: str) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    endpoint = endpoint_for(api.org, "https://hooks.example.com/").endpoint
    url = path.format(session=session.id, endpoint=endpoint.id)
    response = api.put(url)
    assert_envelope(response, 405, "method_not_allowed")
    assert response["Allow"] == allowed
    assert api.get(url)["Allow"] == allowed


def test_head_is_answered_as_get_without_a_body(api: Any) -> None:
    response = api.head(SESSIONS)
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize("path", [SESSIONS, WEBHOOKS])
def test_without_a_key_every_method_is_401_before_405(path: str) -> None:
    for method in ("get", "post", "put", "patch", "delete"):
        assert_envelope(getattr(APIClient(), method)(path), 401, "unauthenticated")
