"""``Idempotency-Key`` on create follows Stripe: a replay answers the stored first response while
the session still waits for its caller, or an error; it never mints a new credential."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from agent_worker import contracts
from billing import selectors as billing_selectors
from billing.models import BillingAccount
from callmissed.errors import Conflict, PaymentRequired
from voice import lifecycle, services, tasks
from voice.config import SessionConfigSerializer
from voice.models import VoiceSession

SESSIONS = "/v1/voice/sessions"
BODY = {"system_prompt": "You are a helpful assistant.", "voice": "shubh", "language": "en-IN"}


def _post(client: Any, key: str, body: Any = BODY) -> Any:
    return client.post(SESSIONS, data=json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


def _config(**fields: Any) -> dict[str, Any]:
    serializer = SessionConfigSerializer(data={**BODY, **fields})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _assert_refused_without_token(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert "token" not in response.json()
    assert response.json()["error"]["code"] == code
    assert "Idempotent-Replayed" not in response


@pytest.mark.django_db
def test_a_replay_while_the_session_waits_answers_the_identical_first_response(api: Any, settings: Any) -> None:
    first = _post(api, "order-1")
    # A token minted now would differ (another expiry); the replay must not mint one.
    settings.LIVEKIT_TOKEN_TTL_SECONDS += 60
    again = _post(api, "order-1")

    assert first.status_code == again.status_code == 201
    assert again.content == first.content  # byte for byte: the same token, not a fresh one
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert VoiceSession.objects.count() == 1


@pytest.mark.django_db
def test_a_replay_of_an_ended_session_is_409_without_a_token(api: Any) -> None:
    session_id = _post(api, "order-1").json()["id"]
    lifecycle.voice_session_mark_active(session_id=session_id)
    lifecycle.voice_session_end(session_id=session_id, reason=contracts.EndReason.COMPLETED)

    response = _post(api, "order-1")

    _assert_refused_without_token(response, 409, "conflict")
    assert VoiceSession.objects.get(pk=session_id).idempotency_response == ""
    error = response.json()["error"]
    assert error["fields"]["session_id"] == session_id
    assert "new Idempotency-Key" in error["message"]
    assert VoiceSession.objects.count() == 1


@pytest.mark.django_db
def test_a_replay_of_an_active_session_is_409_without_a_token(api: Any) -> None:
    session_id = _post(api, "order-1").json()["id"]
    lifecycle.voice_session_mark_active(session_id=session_id)

    _assert_refused_without_token(_post(api, "order-1"), 409, "conflict")
    # Nothing can replay it any more, so its stored token is gone at once, not at the next sweep.
    assert VoiceSession.objects.get(pk=session_id).idempotency_response == ""


@pytest.mark.django_db
def test_the_admin_never_shows_a_stored_token(api: Any, admin_client: Any) -> None:
    body = _post(api, "order-1").json()
    page = admin_client.get(f"/admin/voice/voicesession/{body['id']}/change/")
    assert page.status_code == 200
    assert body["token"] not in page.content.decode()


@pytest.mark.django_db
def test_a_replay_of_a_deleted_session_is_409_without_a_token(api: Any, livekit_server: Any) -> None:
    session_id = _post(api, "order-1").json()["id"]
    livekit_server.rooms.add(VoiceSession.objects.get(pk=session_id).room_name)
    assert api.delete(f"{SESSIONS}/{session_id}").status_code == 204

    _assert_refused_without_token(_post(api, "order-1"), 409, "conflict")
    assert VoiceSession.objects.count() == 1


@pytest.mark.django_db
def test_a_replay_of_a_session_nobody_joined_is_409_without_a_token(api: Any, livekit_server: Any) -> None:
    session_id = _post(api, "order-1").json()["id"]
    session = VoiceSession.objects.get(pk=session_id)
    livekit_server.rooms.add(session.room_name)
    VoiceSession.objects.filter(pk=session_id).update(join_deadline=timezone.now() - timedelta(seconds=1))
    assert tasks.reap_sessions.apply().get()["unjoined"] == 1

    _assert_refused_without_token(_post(api, "order-1"), 409, "conflict")


@pytest.mark.django_db
def test_a_replay_after_the_join_deadline_is_refused_even_before_the_reaper_runs(api: Any) -> None:
    config = _config()
    first = services.voice_session_create(
        organization=api.org, config=config, idempotency_key="k", render=lambda c: b'{"token": "t"}'
    )
    later = first.session.join_deadline + timedelta(seconds=1)

    with pytest.raises(Conflict) as refused:
        services.voice_session_create(organization=api.org, config=config, idempotency_key="k", now=later)
    assert refused.value.fields["session_id"] == str(first.session.id)
    assert VoiceSession.objects.count() == 1


@pytest.mark.django_db
def test_a_replay_for_an_organization_in_debt_never_hands_out_the_token(api: Any) -> None:
    assert _post(api, "order-1").status_code == 201
    account = billing_selectors.billing_account_get(organization=api.org)
    BillingAccount.objects.filter(pk=account.pk).update(balance=Decimal(-3))

    _assert_refused_without_token(_post(api, "order-1"), 402, "payment_required")
    assert VoiceSession.objects.count() == 1


@pytest.mark.django_db
def test_the_same_key_with_another_body_stays_an_idempotency_conflict(api: Any) -> None:
    _post(api, "order-1")
    _assert_refused_without_token(_post(api, "order-1", {**BODY, "voice": "ritu"}), 409, "idempotency_conflict")


@pytest.mark.django_db
def test_a_key_past_its_ttl_no_longer_binds_and_starts_a_fresh_admitted_session(api: Any, settings: Any) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    config = _config()
    used = timezone.now()
    first = services.voice_session_create(
        organization=api.org, config=config, idempotency_key="k", render=lambda c: b"{}", now=used
    )
    after_ttl = used + timedelta(hours=24, seconds=1)

    # Admission applies to the fresh session: an organization that may not run one is refused.
    account = billing_selectors.billing_account_get(organization=api.org)
    account.payment_failed = True
    account.save(update_fields=["payment_failed"])
    with pytest.raises(PaymentRequired):
        services.voice_session_create(organization=api.org, config=config, idempotency_key="k", now=after_ttl)
    assert VoiceSession.objects.get(pk=first.session.pk).idempotency_key == "k"  # nothing released on refusal

    account.payment_failed = False
    account.save(update_fields=["payment_failed"])
    fresh = services.voice_session_create(
        organization=api.org, config=config, idempotency_key="k", render=lambda c: b"{}", now=after_ttl
    )

    assert not fresh.replayed and fresh.session.pk != first.session.pk
    assert fresh.session.status == "created" and fresh.session.idempotency_key == "k"
    old = VoiceSession.objects.get(pk=first.session.pk)
    assert (old.idempotency_key, old.idempotency_response) == (None, "")
    # Within the TTL of its own use the key binds the fresh session.
    assert services.voice_session_create(
        organization=api.org, config=config, idempotency_key="k", now=after_ttl + timedelta(seconds=5)
    ).replayed


@pytest.mark.django_db
def test_the_sweep_drops_stored_tokens_that_can_no_longer_be_replayed(api: Any, settings: Any) -> None:
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    waiting_id = _post(api, "waiting").json()["id"]
    ended_id = _post(api, "ended").json()["id"]
    overdue_id = _post(api, "overdue").json()["id"]

    def stored(session_id: str) -> str:
        return VoiceSession.objects.get(pk=session_id).idempotency_response

    assert all("token" in stored(i) for i in (waiting_id, ended_id, overdue_id))
    # An end drops the token at once; a join deadline passing changes no row, so the sweep does.
    lifecycle.voice_session_end(session_id=ended_id, reason=contracts.EndReason.DELETED)
    assert stored(ended_id) == ""
    VoiceSession.objects.filter(pk=overdue_id).update(join_deadline=timezone.now() - timedelta(seconds=1))
    assert tasks.clear_idempotency_responses.apply().get() == 1
    assert stored(overdue_id) == "" and "token" in stored(waiting_id)
    assert _post(api, "waiting").status_code == 201

    past_ttl = timezone.now() + timedelta(hours=24, seconds=1)
    assert services.idempotency_responses_clear(now=past_ttl) == 1
    assert services.idempotency_responses_clear(now=past_ttl) == 0
    assert stored(waiting_id) == ""


def _race(api: Any, key: str, threads: int) -> list[tuple[int, bytes]]:
    barrier = threading.Barrier(threads)
    answers: list[tuple[int, bytes]] = []

    def create() -> None:
        # Its own client, and (Django connections are per thread) its own database connection.
        client = type(api)(api.plaintext, raise_request_exception=False)
        try:
            barrier.wait(timeout=30)
            response = _post(client, key)
            answers.append((response.status_code, response.content))
        finally:
            connection.close()

    workers = [threading.Thread(target=create) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return answers


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_with_one_key_give_one_session_and_the_same_answer(api: Any) -> None:
    answers = _race(api, "race-1", threads=6)

    assert len(answers) == 6
    assert {status for status, _ in answers} <= {201, 409}, answers
    created = [body for status, body in answers if status == 201]
    assert created and len(set(created)) == 1  # everyone who got a session got the same bytes
    for status, body in answers:
        if status == 409:
            assert json.loads(body)["error"]["code"] == "conflict"
    assert VoiceSession.objects.filter(organization=api.org).count() == 1
