"""No session stays live by accident: join deadlines expire without beat (at admission and for
the sessions a read shows), DELETE ends a session even while LiveKit is down and its room is deleted once LiveKit is
back, and revoking a key ends the socket calls it opened."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Membership
from accounts.tests.factories import make_org
from agent_worker import contracts
from billing import selectors as billing_selectors
from testsupport.fakes.livekit_server import FakeLiveKitServer
from voice import lifecycle, reaper
from voice.models import VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db

SESSIONS = "/v1/voice/sessions"


def _deleted_rooms(server: Any) -> set[str]:
    return {c.request.room for c in server.calls_to("DeleteRoom")}


def _pass_join_deadlines(**filters: Any) -> None:
    """Time passes for these sessions: their join deadline is behind us (no clock is waited on)."""
    VoiceSession.objects.filter(**filters).update(join_deadline=timezone.now() - timedelta(seconds=1))


# ------------------------------------------------------------------------------ unjoined, without beat


def test_unjoined_sessions_stop_locking_the_organization_out_once_their_deadline_passes(
    api: Any, livekit_server: FakeLiveKitServer, django_capture_on_commit_callbacks: Any
) -> None:
    account = billing_selectors.billing_account_get(organization=api.org)
    account.max_concurrent_sessions = 10
    account.save(update_fields=["max_concurrent_sessions"])
    waiting = [api.post(SESSIONS, {}, format="json").json()["id"] for _ in range(10)]
    assert api.post(SESSIONS, {}, format="json").status_code == 429

    _pass_join_deadlines(organization=api.org)  # nobody joined; no reaper runs
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(SESSIONS, {}, format="json")

    assert response.status_code == 201
    expired = VoiceSession.objects.filter(pk__in=waiting)
    assert set(expired.values_list("status", "end_reason")) == {("failed", "unjoined")}
    # Their rooms' deletion went out with the admission that expired them.
    assert _deleted_rooms(livekit_server) == set(expired.values_list("room_name", flat=True))
    assert not expired.filter(room_delete_queued_at__isnull=False).exists()


def test_overdue_sessions_of_other_organizations_do_not_exhaust_provider_capacity(
    api: Any, settings: Any, livekit_server: FakeLiveKitServer
) -> None:
    settings.PROVIDER_MAX_LIVE_SESSIONS = 3
    past = timezone.now() - timedelta(seconds=1)
    VoiceSessionFactory.create_batch(3, join_deadline=past)  # three other organizations, never joined

    assert api.post(SESSIONS, {}, format="json").status_code == 201

    VoiceSessionFactory.create_batch(2, status=VoiceSession.Status.ACTIVE)
    response = api.post(SESSIONS, {}, format="json")
    assert response.status_code == 503  # three streams really are in use now
    assert response.json()["error"]["code"] == "capacity_exhausted"


def test_reading_a_session_past_its_join_deadline_shows_it_failed_as_unjoined(
    api: Any, livekit_server: FakeLiveKitServer
) -> None:
    session_id = api.post(SESSIONS, {}, format="json").json()["id"]
    _pass_join_deadlines(pk=session_id)

    detail = api.get(f"{SESSIONS}/{session_id}").json()
    assert (detail["status"], detail["end_reason"]) == ("failed", "unjoined")
    assert detail["ended_at"] is not None
    [listed] = api.get(SESSIONS).json()["results"]
    assert (listed["status"], listed["end_reason"]) == ("failed", "unjoined")


def test_listing_expires_only_the_callers_overdue_sessions(api: Any, make_client: Any) -> None:
    other = make_client("Other Org")
    past = timezone.now() - timedelta(seconds=1)
    theirs = VoiceSessionFactory.create(organization=other.org, join_deadline=past)
    mine = VoiceSessionFactory.create(organization=api.org, join_deadline=past)

    api.get(SESSIONS)

    assert VoiceSession.objects.get(pk=mine.pk).status == "failed"
    assert VoiceSession.objects.get(pk=theirs.pk).status == "created"


def test_a_status_filter_never_shows_a_session_past_its_deadline_as_waiting(api: Any) -> None:
    past = timezone.now() - timedelta(seconds=1)
    VoiceSessionFactory.create(organization=api.org, join_deadline=past)
    waiting = VoiceSessionFactory.create(organization=api.org)

    created = api.get(f"{SESSIONS}?status=created").json()["results"]
    assert [s["id"] for s in created] == [str(waiting.pk)]


def test_the_failed_filter_finds_sessions_past_their_deadline_the_reaper_has_not_closed(api: Any) -> None:
    past = timezone.now() - timedelta(seconds=1)
    overdue = VoiceSessionFactory.create(organization=api.org, join_deadline=past)
    VoiceSessionFactory.create_batch(3, organization=api.org)  # newer, in time

    failed = api.get(f"{SESSIONS}?status=failed").json()["results"]
    assert [(s["id"], s["end_reason"]) for s in failed] == [(str(overdue.pk), "unjoined")]


def test_a_sessions_transcripts_never_show_it_waiting_past_its_deadline(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org, join_deadline=timezone.now() - timedelta(seconds=1))

    body = api.get(f"{SESSIONS}/{session.pk}/transcripts").json()

    assert (body["status"], body["segments"]) == ("failed", [])


def test_a_read_ends_only_the_overdue_sessions_it_shows(api: Any) -> None:
    """Reads cost no sweep: a session past its deadline that a page does not show is left to the
    reaper and the next admission (neither of which a read waits for)."""
    past = timezone.now() - timedelta(seconds=1)
    unseen = VoiceSessionFactory.create(organization=api.org, join_deadline=past)
    shown = VoiceSessionFactory.create(organization=api.org)  # newer: the page of one

    [listed] = api.get(f"{SESSIONS}?limit=1").json()["results"]

    assert listed["id"] == str(shown.pk)
    assert VoiceSession.objects.get(pk=unseen.pk).status == "created"


def test_expiry_follows_the_clock_it_is_given() -> None:
    session = VoiceSessionFactory.create()
    deadline = session.join_deadline

    assert lifecycle.voice_sessions_expire_unjoined(now=deadline - timedelta(seconds=1)) == []
    assert VoiceSession.objects.get(pk=session.pk).status == "created"

    [expired] = lifecycle.voice_sessions_expire_unjoined(
        organization=session.organization, now=deadline + timedelta(seconds=1)
    )
    assert (expired.pk, expired.status, expired.end_reason) == (session.pk, "failed", "unjoined")
    assert expired.ended_at == deadline + timedelta(seconds=1)


def test_the_dashboard_session_pages_show_overdue_sessions_as_unjoined(client: Any) -> None:
    org = make_org(name="Dash Org")
    user = User.objects.create_user(username="dash", password="pw-dash-123")
    Membership.objects.create(user=user, organization=org, role=Membership.Role.OWNER)
    session = VoiceSessionFactory.create(organization=org, join_deadline=timezone.now() - timedelta(seconds=1))
    client.force_login(user)

    assert client.get("/dashboard/sessions/").status_code == 200
    assert VoiceSession.objects.get(pk=session.pk).end_reason == "unjoined"


# ------------------------------------------------------------------------------ DELETE while LiveKit is down


@pytest.fixture
def livekit_down(settings: Any) -> Iterator[FakeLiveKitServer]:
    """The LiveKit server API refuses connections: a fake of its own, stopped and its port closed
    (the run's shared fake goes on serving other tests)."""
    gone = FakeLiveKitServer(api_key=settings.LIVEKIT_API_KEY, api_secret=settings.LIVEKIT_API_SECRET).start()
    settings.LIVEKIT_API_URL = gone.url
    gone.stop()
    yield gone


def test_delete_while_livekit_is_unreachable_ends_the_session_and_the_sweep_deletes_the_room_later(
    api: Any, livekit_down: FakeLiveKitServer, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    session_id = api.post(SESSIONS, {}, format="json").json()["id"]
    room = VoiceSession.objects.get(pk=session_id).room_name

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"{SESSIONS}/{session_id}")

    assert response.status_code == 204
    row = VoiceSession.objects.get(pk=session_id)
    assert (row.status, row.end_reason) == ("ended", "deleted")
    assert row.room_delete_queued_at is not None  # still owed to LiveKit

    back = FakeLiveKitServer(api_key=settings.LIVEKIT_API_KEY, api_secret=settings.LIVEKIT_API_SECRET).start()
    try:
        back.rooms.add(room)
        settings.LIVEKIT_API_URL = back.url
        later = timezone.now() + timedelta(seconds=lifecycle.ROOM_DELETE_REQUEUE_SECONDS + 1)
        with django_capture_on_commit_callbacks(execute=True):
            result = reaper.voice_sessions_reap(now=later)
        assert result.rooms_requeued == [room]
        assert room not in back.rooms and _deleted_rooms(back) == {room}
        assert VoiceSession.objects.get(pk=session_id).room_delete_queued_at is None
        # Confirmed gone: the next sweep leaves it alone.
        assert reaper.voice_sessions_reap(now=later + timedelta(hours=1)).rooms_requeued == []
    finally:
        back.stop()


def test_a_room_deletion_queued_recently_is_not_queued_again(livekit_server: FakeLiveKitServer) -> None:
    now = timezone.now()
    VoiceSessionFactory.create(status=VoiceSession.Status.ENDED, room_delete_queued_at=now)
    assert lifecycle.voice_sessions_room_delete_requeue(now=now + timedelta(seconds=10)) == []


# ------------------------------------------------------------------------------ key revocation


def test_revoking_a_key_ends_its_socket_sessions_and_leaves_its_livekit_sessions(
    api: Any, django_capture_on_commit_callbacks: Any
) -> None:
    socket = VoiceSessionFactory.create(
        organization=api.org, api_key=api.key, transport=contracts.Transport.WEBSOCKET, status="active"
    )
    room = VoiceSessionFactory.create(organization=api.org, api_key=api.key, status="active")
    other_key = VoiceSessionFactory.create(organization=api.org, transport=contracts.Transport.WEBSOCKET)

    with django_capture_on_commit_callbacks(execute=True):
        account_services.api_key_revoke(api_key=api.key)

    socket.refresh_from_db()
    assert (socket.status, socket.end_reason) == ("ended", "key_revoked")
    assert VoiceSession.objects.get(pk=room.pk).status == "active"
    assert VoiceSession.objects.get(pk=other_key.pk).status == "created"
