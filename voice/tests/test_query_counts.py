"""What a request costs the database: a fixed number of statements whatever the page size, and
an index behind every filter the list takes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import ApiKey
from agent_worker import contracts
from billing.models import BillingAccount
from voice import selectors
from voice.models import VoiceSession
from voice.tests.factories import TranscriptSegmentFactory, VoiceSessionFactory

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"

# Inside a test the request's transaction is a savepoint, counted as two statements (SAVEPOINT and
# RELEASE); in production it is BEGIN and COMMIT, which the count does not see.
SAVEPOINT = 2


def _warm(client: Any) -> None:
    # The first request of a key records its last use; the counts below are of every other one.
    assert client.get(SESSIONS).status_code == 200


def test_a_create_is_three_statements(api: Any, django_assert_num_queries: Any) -> None:
    """The provider lock; the organization's row with its billing account, the key's revocation
    and every count admission needs; the insert. The key itself comes from the process's cache."""
    _warm(api)
    with django_assert_num_queries(3 + SAVEPOINT):
        response = api.post(SESSIONS, data=json.dumps({"metadata": {"plan": "pro"}}), content_type="application/json")
    assert response.status_code == 201, response.content


def test_a_session_nobody_joined_frees_its_place_at_the_next_create(api: Any) -> None:
    BillingAccount.objects.filter(organization=api.org).update(max_concurrent_sessions=1)
    overdue = VoiceSessionFactory.create(organization=api.org, join_deadline=timezone.now() - timedelta(seconds=1))
    response = api.post(SESSIONS, data="{}", content_type="application/json")
    assert response.status_code == 201, response.content
    overdue.refresh_from_db()
    assert not overdue.is_live
    assert overdue.end_reason == contracts.EndReason.UNJOINED


@pytest.mark.parametrize("sessions", [1, 30])
def test_a_list_page_costs_the_same_whatever_its_size(api: Any, django_assert_num_queries: Any, sessions: int) -> None:
    VoiceSessionFactory.create_batch(sessions, organization=api.org)
    _warm(api)
    # The page: the key from the process's cache, no expiry sweep while every session is in time.
    with django_assert_num_queries(1):
        body = api.get(f"{SESSIONS}?limit=20").json()
    assert len(body["results"]) == min(sessions, 20)


def test_a_get_reads_the_session_and_its_usage_once(api: Any, django_assert_num_queries: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    _warm(api)
    # The session, its usage (no key read, no expiry sweep, no organization re-read).
    with django_assert_num_queries(2):
        assert api.get(f"{SESSIONS}/{session.id}").status_code == 200


@pytest.mark.parametrize("segments", [1, 40])
def test_transcripts_cost_the_same_whatever_their_length(
    api: Any, django_assert_num_queries: Any, segments: int
) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    for i in range(segments):
        TranscriptSegmentFactory(session=session, start_offset_ms=i * 1000, end_offset_ms=i * 1000 + 500)
    _warm(api)
    with django_assert_num_queries(2):  # the session, its segments
        body = api.get(f"{SESSIONS}/{session.id}/transcripts").json()
    assert len(body["segments"]) == segments


def test_usage_is_one_read(api: Any, django_assert_num_queries: Any) -> None:
    _warm(api)
    with django_assert_num_queries(1):
        assert api.get("/v1/usage").status_code == 200


def test_a_key_in_use_is_written_at_most_once_a_minute(api: Any, django_assert_num_queries: Any) -> None:
    _warm(api)
    first = ApiKey.objects.get(pk=api.key.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(1):  # the page: no read and no UPDATE of the key
        api.get(SESSIONS)
    assert ApiKey.objects.get(pk=api.key.pk).last_used_at == first


def test_a_stale_last_use_is_written_once_even_by_racing_requests(api: Any) -> None:
    """Two requests that both read a stale value: the conditional UPDATE lets only one write."""
    from accounts.services import api_key_touch

    stale = timezone.now() - timedelta(hours=1)
    ApiKey.objects.filter(pk=api.key.pk).update(last_used_at=stale)
    seen_by_both = [ApiKey.objects.get(pk=api.key.pk) for _ in range(2)]
    api_key_touch(api_key=seen_by_both[0])
    written = ApiKey.objects.get(pk=api.key.pk).last_used_at
    api_key_touch(api_key=seen_by_both[1])
    assert ApiKey.objects.get(pk=api.key.pk).last_used_at == written


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's")
@pytest.mark.parametrize(
    ("filters", "condition"),
    [
        ({}, "(organization_id = "),
        ({"created_after": timedelta(hours=1)}, "(created_at >= "),
        ({"status": "active"}, "((status)::text = 'active'::text)"),
        ({"transport": "websocket"}, "((transport)::text = 'websocket'::text)"),
        ({"metadata": {"plan": "pro"}}, """(metadata @> '{"plan": "pro"}'::jsonb)"""),
    ],
)
def test_every_list_filter_has_an_index(api: Any, filters: dict[str, Any], condition: str) -> None:
    """An organization with a long history, where each filter picks out a few sessions: the plan
    of each filter uses the index made for it, where a filter without one would read the
    organization's whole history (or the table)."""
    now = timezone.now()
    history = [
        VoiceSessionFactory.build(
            organization=api.org,
            status=VoiceSession.Status.ENDED,
            metadata={"plan": "free"},
            room_name=f"cm_history_{i}",
        )
        for i in range(3000)
    ]
    VoiceSession.objects.bulk_create(history)
    # Their real age: created_at is set on insert, so the history is moved back in one statement.
    VoiceSession.objects.filter(organization=api.org).update(created_at=now - timedelta(days=30))
    VoiceSessionFactory.create_batch(
        3,
        organization=api.org,
        status=VoiceSession.Status.ACTIVE,
        transport=contracts.Transport.WEBSOCKET,
        metadata={"plan": "pro"},
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE voice_voicesession")
    if "created_after" in filters:
        filters = {"created_after": now - filters["created_after"]}
    plan = selectors.voice_session_list(organization=api.org, **filters)[:20].explain()
    index_conditions = [line for line in plan.splitlines() if "Index Cond:" in line]
    assert "Seq Scan" not in plan, plan
    assert any(condition in line for line in index_conditions), plan
