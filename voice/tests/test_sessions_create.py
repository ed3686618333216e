from __future__ import annotations

import json
import threading
from typing import Any, get_args

import pytest
from django.db import connection
from livekit import api as lk

from agent_worker import contracts, sealing
from agent_worker.provider_settings import ProviderSettings
from voice.models import VoiceSession

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"
QUICKSTART = {
    "system_prompt": "You are a helpful assistant.",
    "voice": "shubh",
    "language": "en-IN",
    "llm_model": "kimi-k2.5",
}


def _post(client: Any, body: Any, **headers: str) -> Any:
    return client.post(SESSIONS, data=json.dumps(body), content_type="application/json", **headers)


def test_seed_quickstart_body_creates_session(api: Any, settings: Any) -> None:
    response = _post(api, QUICKSTART)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "created"
    assert body["ws_url"] == settings.LIVEKIT_URL
    assert body["token"].count(".") == 2
    session = VoiceSession.objects.get(pk=body["id"])
    assert session.organization == api.org
    assert session.system_prompt == "You are a helpful assistant."
    assert session.transport == "livekit"


def test_empty_body_takes_documented_defaults(api: Any) -> None:
    body = _post(api, {}).json()
    assert body["config"] == {
        "system_prompt": contracts.DEFAULT_SYSTEM_PROMPT,
        "voice": "shubh",
        "language": "en-IN",
        "llm_model": "kimi-k2.5",
        "tts_provider": "sarvam",
        "max_duration_seconds": 300,
        "backchannels": {"enabled": True, "extra_phrases": []},
        "tools": [],
    }
    assert body["metadata"] == {}


def test_backchannel_settings_are_stored_returned_and_dispatched(api: Any) -> None:
    settings_in = {"enabled": False, "extra_phrases": ["bas bas", " sahi baat "]}
    body = _post(api, {**QUICKSTART, "backchannels": settings_in}).json()

    expected = {"enabled": False, "extra_phrases": ["bas bas", "sahi baat"]}
    assert body["config"]["backchannels"] == expected
    assert api.get(f"{SESSIONS}/{body['id']}").json()["config"]["backchannels"] == expected
    session = VoiceSession.objects.get(pk=body["id"])
    assert session.config().backchannels == contracts.BackchannelSettings(**expected)


def test_token_grants_one_room_and_dispatches_the_agent(api: Any, settings: Any) -> None:
    settings.PROVIDERS = ProviderSettings(sarvam_api_key="sarvam-secret-value", clarifai_pat="clarifai-secret-value")
    body = _post(api, {**QUICKSTART, "metadata": {"customer": "42"}}).json()
    token = body["token"]
    claims = lk.TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(token)
    session = VoiceSession.objects.get(pk=body["id"])

    assert claims.identity == f"user-{session.id}"
    assert claims.video is not None and claims.room_config is not None
    assert claims.video.room_join is True
    assert claims.video.room == session.room_name
    assert not claims.video.room_admin and not claims.video.room_create and not claims.video.room_list
    assert len(session.room_name) >= 24  # unguessable: 18 random bytes

    payload = json.loads(_jwt_payload(token))
    assert payload["exp"] - payload["nbf"] == settings.LIVEKIT_TOKEN_TTL_SECONDS
    agents = claims.room_config.agents
    assert [a.agent_name for a in agents] == [settings.LIVEKIT_AGENT_NAME]
    dispatch = contracts.DispatchMetadata.model_validate_json(
        sealing.unseal(agents[0].metadata, secret=settings.LIVEKIT_API_SECRET)
    )
    assert dispatch.session_id == str(session.id)
    assert dispatch.config == session.config()
    for secret in ("sarvam-secret-value", "clarifai-secret-value", settings.LIVEKIT_API_SECRET):
        assert secret not in _jwt_payload(token)


def test_the_callers_token_does_not_reveal_the_prompt_or_the_tools(api: Any) -> None:
    """The token goes to the customer's end user; the prompt and tool endpoints stay the customer's."""
    tool = {
        "name": "lookup_order",
        "description": "Look up an order",
        "url": "https://crm.example.com/internal/orders",
        "parameters": {"type": "object", "properties": {}},
    }
    body = _post(api, {**QUICKSTART, "system_prompt": "Offer the VIP discount code GOLD-77.", "tools": [tool]}).json()
    readable = _jwt_payload(body["token"])
    assert "GOLD-77" not in readable and "crm.example.com" not in readable
    assert body["config"]["system_prompt"] == "Offer the VIP discount code GOLD-77."  # the customer still sees it


def _jwt_payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def test_every_session_gets_its_own_room(api: Any) -> None:
    rooms = {VoiceSession.objects.get(pk=_post(api, {}).json()["id"]).room_name for _ in range(5)}
    assert len(rooms) == 5


@pytest.mark.parametrize(
    "model", ["sarvam-105b", "moonshotai/kimi-k2.5", "openai/gpt-4o-mini", "meta-llama/llama-3.1-8b:free"]
)
def test_named_and_openrouter_models_are_accepted(api: Any, model: str) -> None:
    assert _post(api, {"llm_model": model}).status_code == 201


@pytest.mark.parametrize("seconds", [30, 3600])
def test_duration_bounds_are_inclusive(api: Any, seconds: int) -> None:
    assert _post(api, {"max_duration_seconds": seconds}).json()["config"]["max_duration_seconds"] == seconds


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"voice": "bob"}, "voice", "Accepted values: shubh, aditya"),
        ({"language": "fr-FR"}, "language", "Accepted values: hi-IN"),
        ({"language": "as-IN"}, "language", "no voice yet"),
        ({"llm_model": "gpt-5"}, "llm_model", "kimi-k2.5, sarvam-105b, or any OpenRouter model id"),
        ({"llm_model": "kimi-k2.5-fast"}, "llm_model", "under maintenance"),
        ({"tts_provider": "elevenlabs"}, "tts_provider", "Accepted values: sarvam"),
        ({"max_duration_seconds": 29}, "max_duration_seconds", "greater than or equal to 30"),
        ({"max_duration_seconds": 3601}, "max_duration_seconds", "less than or equal to 3600"),
        ({"max_duration_seconds": "300"}, "max_duration_seconds", "integer"),
        ({"max_duration_seconds": 300.5}, "max_duration_seconds", "integer"),
        ({"max_duration_seconds": True}, "max_duration_seconds", "integer"),
        ({"voice": 7}, "voice", "string"),
        ({"system_prompt": ["a"]}, "system_prompt", "string"),
        ({"system_prompt": "x" * (contracts.MAX_SYSTEM_PROMPT_CHARS + 1)}, "system_prompt", "no more than 8000"),
        ({"system_prompt": "   "}, "system_prompt", "blank"),
        ({"temperature": 0.2}, "temperature", "Unknown field. Accepted fields: system_prompt"),
        ({"metadata": {"nested": {"a": 1}}}, "metadata", "string, number, boolean or null"),
        ({"metadata": "plain"}, "metadata", "dictionary"),
        ({"backchannels": {"enabled": "yes"}}, "backchannels.enabled", "true or false"),
        ({"backchannels": {"mode": "strict"}}, "backchannels.mode", "Accepted fields: enabled, extra_phrases"),
        ({"backchannels": {"extra_phrases": ["a b c d e f g"]}}, "backchannels.extra_phrases", "more than 6 words"),
        # Punctuation separates words as the worker's matcher reads them.
        (
            {"backchannels": {"extra_phrases": ["haan,ji,theek,hai,bilkul,sahi,baat"]}},
            "backchannels.extra_phrases",
            "more than 6 words",
        ),
        ({"backchannels": {"extra_phrases": ["!!!"]}}, "backchannels.extra_phrases", "no words"),
        ({"backchannels": {"extra_phrases": ["ok", "x" * 41]}}, "backchannels.extra_phrases", "no more than 40"),
        ({"backchannels": {"extra_phrases": ["ok"] * 51}}, "backchannels.extra_phrases", "no more than 50"),
        ({"backchannels": {"extra_phrases": [7]}}, "backchannels.extra_phrases", "string"),
        ({"backchannels": "off"}, "backchannels", "dictionary"),
    ],
)
def test_invalid_config_names_the_field(api: Any, body: dict[str, Any], field: str, fragment: str) -> None:
    response = _post(api, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error
    assert fragment in " ".join(error["fields"][field]), error["fields"][field]
    assert error["message"].startswith(field)
    assert not VoiceSession.objects.exists()


def _limit_breaches() -> list[tuple[str, Any]]:
    """One value past each limit the contract declares, for a field of the session config."""
    breaches: list[tuple[str, Any]] = []
    for name, info in contracts.SessionConfig.model_fields.items():
        for limit in (m for m in info.metadata if isinstance(m, contracts.Limits)):
            if limit.min_length:
                breaches.append((name, "x" * (limit.min_length - 1)))
            if limit.max_length is not None:
                breaches.append((name, "x" * (limit.max_length + 1)))
            if limit.ge is not None:
                breaches.append((name, limit.ge - 1))
            if limit.le is not None:
                breaches.append((name, limit.le + 1))
            if limit.choices:
                breaches.append((name, f"not-{limit.choices[0]}"))
    return breaches


@pytest.mark.parametrize(("field", "value"), _limit_breaches())
def test_every_limit_of_the_contract_is_enforced_by_the_api(api: Any, field: str, value: Any) -> None:
    """The contract is where a limit is written: a new one is refused at the door without another line."""
    response = _post(api, {field: value})
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_the_documented_body_states_the_contracts_defaults_and_limits(api: Any) -> None:
    schema = api.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"][SESSIONS]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    _assert_documents(schema, ref, contracts.SessionConfig)
    assert "metadata" in schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]


def _assert_documents(schema: dict[str, Any], ref: str, model: Any) -> None:
    documented = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    for name, info in model.model_fields.items():
        limits = next((m for m in info.metadata if isinstance(m, contracts.Limits)), contracts.Limits())
        field = documented[name]
        if "$ref" in field:  # a nested contract (backchannels): its own component
            _assert_documents(schema, field["$ref"], info.annotation)
            continue
        # A default built per request (an empty list) is not written into the schema.
        assert field.get("default", info.get_default(call_default_factory=True)) == info.get_default(
            call_default_factory=True
        ), name
        if field.get("type") == "array":
            assert (field.get("maxItems"), field["items"].get("maxLength")) == (
                limits.max_length,
                limits.item_max_length,
            ), name
            if "$ref" in field["items"]:  # a list of contracts (tools): each item its own component
                _assert_documents(schema, field["items"]["$ref"], get_args(info.annotation)[0])
            continue
        assert (field.get("maxLength"), field.get("minimum"), field.get("maximum")) == (
            limits.max_length,
            limits.ge,
            limits.le,
        ), name


def test_all_problems_are_reported_at_once(api: Any) -> None:
    error = _post(api, {"voice": "bob", "language": "xx", "bogus": 1}).json()["error"]
    assert set(error["fields"]) == {"voice", "language", "bogus"}


def test_body_must_be_a_json_object(api: Any) -> None:
    assert _post(api, [QUICKSTART]).status_code == 400
    response = api.post(SESSIONS, data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    response = api.post(SESSIONS, data="voice=shubh", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_idempotency_key_replays_the_same_session(api: Any) -> None:
    first = _post(api, QUICKSTART, HTTP_IDEMPOTENCY_KEY="order-1")
    again = _post(api, QUICKSTART, HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert VoiceSession.objects.count() == 1
    assert _post(api, QUICKSTART, HTTP_IDEMPOTENCY_KEY="order-2").json()["id"] != first.json()["id"]


def test_idempotency_key_reused_with_another_body_is_409(api: Any) -> None:
    _post(api, QUICKSTART, HTTP_IDEMPOTENCY_KEY="order-1")
    response = _post(api, {**QUICKSTART, "voice": "ritu"}, HTTP_IDEMPOTENCY_KEY="order-1")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"


def test_idempotency_keys_are_per_organization(make_client: Any) -> None:
    a, b = make_client(), make_client()
    ida = _post(a, QUICKSTART, HTTP_IDEMPOTENCY_KEY="same").json()["id"]
    idb = _post(b, QUICKSTART, HTTP_IDEMPOTENCY_KEY="same").json()["id"]
    assert ida != idb


def test_provider_capacity_exhausted_is_503_with_retry_after(api: Any, settings: Any) -> None:
    settings.PROVIDER_MAX_LIVE_SESSIONS = 2
    assert _post(api, {}).status_code == 201
    assert _post(api, {}).status_code == 201
    response = _post(api, {})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "capacity_exhausted"
    assert int(response["Retry-After"]) > 0
    assert VoiceSession.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_provider_capacity_holds_when_many_organizations_create_at_once(make_client: Any, settings: Any) -> None:
    """Each create locks only its own organization: the global provider cap needs a lock of its own."""
    settings.PROVIDER_MAX_LIVE_SESSIONS = 3
    clients = [make_client(f"Clinic {i}") for i in range(12)]
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def create(client: Any) -> None:
        try:
            barrier.wait(timeout=30)
            statuses.append(_post(client, QUICKSTART).status_code)
        finally:
            connection.close()

    workers = [threading.Thread(target=create, args=(client,)) for client in clients]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert sorted(statuses) == [201] * 3 + [503] * 9
    assert VoiceSession.objects.count() == 3
