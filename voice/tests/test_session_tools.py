"""Session tools through the REST API and the transcript: what is accepted, what is refused and
why, what the agent is dispatched with, and how tool calls read back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from livekit import api as lk

from agent_worker import contracts, sealing, tools
from voice import lifecycle
from voice.models import VoiceSession

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"
LOOKUP = {
    "name": "lookup_order",
    "description": "Look up an order's status by its id.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    "url": "https://api.example.com/tools/lookup_order",
}


def _post(client: Any, body: Any) -> Any:
    return client.post(SESSIONS, data=json.dumps(body), content_type="application/json")


def _tool_errors(response: Any) -> Any:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert not VoiceSession.objects.exists()
    return error["fields"]


def test_a_session_with_tools_stores_them_returns_them_and_dispatches_them(api: Any, settings: Any) -> None:
    response = _post(api, {"tools": [LOOKUP, {**LOOKUP, "name": "store-hours", "timeout_ms": 800}]})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["config"]["tools"] == [
        {**LOOKUP, "timeout_ms": contracts.DEFAULT_TOOL_TIMEOUT_MS},
        {**LOOKUP, "name": "store-hours", "timeout_ms": 800},
    ]
    session = VoiceSession.objects.get(pk=body["id"])
    claims = lk.TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(body["token"])
    assert claims.room_config is not None
    dispatch = contracts.DispatchMetadata.model_validate_json(
        sealing.unseal(claims.room_config.agents[0].metadata, secret=settings.LIVEKIT_API_SECRET)
    )
    assert dispatch.config.tools == session.config().tools
    assert [t.name for t in dispatch.config.tools] == ["lookup_order", "store-hours"]
    assert dispatch.organization_id == str(api.org.pk)
    # The signing secret is derived by the worker, never carried in the caller's token.
    secret = tools.tool_signing_secret(signing_key=settings.TOOL_SIGNING_KEY, organization_id=str(api.org.pk))
    assert secret.split("_", 1)[1] not in claims.room_config.agents[0].metadata
    assert api.get(f"{SESSIONS}/{session.id}").json()["config"]["tools"] == body["config"]["tools"]


def test_a_tool_without_parameters_takes_no_arguments(api: Any) -> None:
    tool = {key: value for key, value in LOOKUP.items() if key != "parameters"}
    body = _post(api, {"tools": [tool]}).json()
    assert body["config"]["tools"][0]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"name": "look up"}, "name", "Must match"),
        ({"name": "x" * 65}, "name", "64"),
        ({"name": "end_call"}, "name", "built-in"),
        ({"description": ""}, "description", "blank"),
        ({"description": "d" * 1025}, "description", "1024"),
        ({"url": "http://api.example.com/tool"}, "url", "https"),
        ({"url": "ftp://api.example.com/tool"}, "url", "https"),
        ({"url": "https://127.0.0.1/tool"}, "url", "non-public"),
        ({"url": "https://user:pw@api.example.com/tool"}, "url", "credentials"),
        ({"timeout_ms": 499}, "timeout_ms", "500"),
        ({"timeout_ms": 30001}, "timeout_ms", "30000"),
        ({"timeout_ms": "5000"}, "timeout_ms", "integer"),
        ({"parameters": "object"}, "parameters", "JSON object"),
        ({"parameters": {"type": "string"}}, "parameters", '"type": "object"'),
        ({"parameters": {"type": "object", "properties": 3}}, "parameters", "JSON Schema"),
        ({"parameters": {"type": "object", "description": "x" * 9000}}, "parameters", "8192 bytes"),
        (
            {"parameters": {"type": "object", "a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}},
            "parameters",
            "8 levels",
        ),
        ({"extra": 1}, "extra", "Unknown field"),
    ],
)
def test_an_invalid_tool_names_the_tool_and_the_field(
    api: Any, change: dict[str, Any], field: str, fragment: str
) -> None:
    errors = _tool_errors(_post(api, {"tools": [LOOKUP, {**LOOKUP, "name": "second", **change}]}))
    assert set(errors) == {f"tools.1.{field}"}, errors
    assert fragment in " ".join(errors[f"tools.1.{field}"]), errors


def test_tool_names_are_unique_and_at_most_sixteen_tools(api: Any) -> None:
    assert "already named" in " ".join(_tool_errors(_post(api, {"tools": [LOOKUP, LOOKUP]}))["tools.1.name"])
    many = [{**LOOKUP, "name": f"tool_{n}"} for n in range(contracts.MAX_TOOLS + 1)]
    assert "16" in " ".join(_tool_errors(_post(api, {"tools": many}))["tools"])
    assert _post(api, {"tools": many[:16]}).status_code == 201


def test_plain_http_tools_need_the_operators_setting(api: Any, settings: Any) -> None:
    tool = {**LOOKUP, "url": "http://api.example.com/tool"}
    assert _post(api, {"tools": [tool]}).status_code == 400
    settings.TOOLS_ALLOW_HTTP = True
    assert _post(api, {"tools": [tool]}).status_code == 201


def test_the_schema_documents_tools_and_the_tool_lines_of_a_transcript(api: Any) -> None:
    schema = api.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    components = schema["components"]["schemas"]
    ref = schema["paths"][SESSIONS]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    tools_field = components[ref.rsplit("/", 1)[1]]["properties"]["tools"]
    assert tools_field["type"] == "array" and tools_field["maxItems"] == contracts.MAX_TOOLS
    tool = components[tools_field["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(tool["properties"]) == {"name", "description", "parameters", "url", "timeout_ms"}
    assert tool["properties"]["name"]["pattern"] == contracts.TOOL_NAME_PATTERN
    assert (tool["properties"]["timeout_ms"]["minimum"], tool["properties"]["timeout_ms"]["maximum"]) == (500, 30000)
    assert "tools_signing_secret" in json.dumps(schema["paths"]["/v1/tools/signing-secret"])
    segment = components["TranscriptSegment"]["properties"]
    assert "tool" in json.dumps(components[segment["role"]["$ref"].rsplit("/", 1)[1]])
    assert "tool_call" in segment


def test_tool_lines_read_back_in_the_transcript(api: Any) -> None:
    session_id = _post(api, {"tools": [LOOKUP]}).json()["id"]
    record = contracts.ToolCallRecord(
        name="lookup_order",
        call_id="call_1",
        arguments='{"order_id": "A-17"}',
        result='{"status": "shipped"}',
        latency_ms=84.5,
    )
    lifecycle.transcript_segment_add(
        segment=contracts.TranscriptSegment(
            session_id=session_id,
            role="tool",
            text="lookup_order",
            start_offset_ms=1200,
            end_offset_ms=1285,
            tool_call=record,
        )
    )
    lifecycle.transcript_segment_add(
        segment=contracts.TranscriptSegment(
            session_id=session_id, role="agent", text="It has shipped.", start_offset_ms=1400, end_offset_ms=2400
        )
    )
    lines = api.get(f"{SESSIONS}/{session_id}/transcripts").json()["segments"]
    assert [(line["role"], line["text"]) for line in lines] == [("tool", "lookup_order"), ("agent", "It has shipped.")]
    assert lines[0]["tool_call"] == record.model_dump(mode="json")
    assert lines[1]["tool_call"] is None


def test_the_signing_secret_is_the_organizations_and_signs_what_the_worker_signs(
    api: Any, make_client: Any, settings: Any
) -> None:
    secret = api.get("/v1/tools/signing-secret").json()["secret"]
    assert secret.startswith("whsec_")
    assert secret == tools.tool_signing_secret(signing_key=settings.TOOL_SIGNING_KEY, organization_id=str(api.org.pk))
    assert make_client(org_name="Another org").get("/v1/tools/signing-secret").json()["secret"] != secret
