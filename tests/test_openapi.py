"""The published OpenAPI document is valid and describes every API endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_spec_validator import validate
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def _api_routes() -> set[str]:
    """Every /v1 route the URLconf serves, in OpenAPI path syntax."""
    routes: set[str] = set()

    def walk(patterns: Any, prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif isinstance(p, URLPattern) and route.startswith("v1/") and "^" not in route:
                routes.add("/" + route.replace("<str:", "{").replace(">", "}"))

    walk(get_resolver().url_patterns, "")
    return routes - {"/v1/schema", "/v1/docs", "/v1/redoc"}


def test_schema_is_valid_openapi_3_and_covers_every_endpoint() -> None:
    response = APIClient().get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    validate(schema)
    documented = set(schema["paths"])
    routes = _api_routes()
    assert routes, "no API routes found"
    assert routes <= documented, f"undocumented: {routes - documented}"


def test_session_create_is_documented_with_bearer_auth() -> None:
    schema = APIClient().get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    create = schema["paths"]["/v1/voice/sessions"]["post"]
    assert "201" in create["responses"]
    assert any("ApiKey" in name or "Bearer" in name for req in create["security"] for name in req)


def test_schema_generates_without_warnings(tmp_path: Any) -> None:
    # Warnings mean drf-spectacular guessed (or dropped) part of a request or response shape.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))


def test_interactive_docs_page_is_served() -> None:
    response = APIClient().get("/v1/docs")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def _served_schema() -> dict[str, Any]:
    return APIClient().get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def test_every_operation_documents_its_errors_as_the_envelope() -> None:
    schema = _served_schema()
    envelope = schema["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["properties"]["error"]["required"] == ["code", "message", "fields", "request_id"]
    shared = schema["components"]["responses"]
    operations = [(path, op) for path, item in schema["paths"].items() for op in item.values()]
    for path, operation in operations:
        for status in ("400", "500", "503"):
            assert status in operation["responses"], (path, operation["operationId"], status)
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                name = response["$ref"].rsplit("/", 1)[1]
                content = shared[name]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/ErrorEnvelope"}
                assert shared[name]["headers"]["X-Request-ID"]["required"] is True
    assert shared["TooManyRequests"]["headers"]["Retry-After"]["required"] is True
    assert shared["ServiceUnavailable"]["headers"]["Retry-After"]["required"] is True


def test_operations_document_the_errors_their_inputs_can_cause() -> None:
    paths = _served_schema()["paths"]
    create = paths["/v1/voice/sessions"]["post"]["responses"]
    assert {"401", "402", "409", "413", "415", "429"} <= set(create)
    assert "404" in paths["/v1/voice/sessions/{session_id}"]["get"]["responses"]
    assert "401" not in paths["/v1/catalog/voices"]["get"]["responses"]
    # Stripe's webhook is not rate limited and carries no API key.
    webhook = paths["/v1/billing/stripe/webhook"]["post"]["responses"]
    assert "413" in webhook and "429" not in webhook and "401" not in webhook
