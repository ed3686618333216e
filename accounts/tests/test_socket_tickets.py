"""Single-use WebSocket tickets: what the dashboard's playground authenticates its socket with."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services
from accounts.keys import hash_key
from accounts.models import Membership, SocketTicket
from accounts.tests.factories import UserFactory, make_org
from accounts.ws_auth import WsKeyAuth, ws_key_authenticate
from callmissed.errors import ErrorCode

pytestmark = pytest.mark.django_db


@pytest.fixture
def member() -> Membership:
    return Membership.objects.create(user=UserFactory.create(), organization=make_org(), role=Membership.Role.MEMBER)


def _connect(ticket: str) -> WsKeyAuth:
    return ws_key_authenticate(query_string=f"ticket={ticket}".encode())


def test_a_ticket_opens_exactly_one_socket_for_its_organization(member: Membership) -> None:
    minted = services.socket_ticket_create(user=member.user, organization=member.organization)

    first = _connect(minted.plaintext)
    again = _connect(minted.plaintext)

    assert first.ok and first.organization == member.organization and first.api_key is None
    assert not again.ok and again.error_code == ErrorCode.INVALID_TICKET


def test_a_ticket_is_stored_only_as_its_hash(member: Membership) -> None:
    minted = services.socket_ticket_create(user=member.user, organization=member.organization)

    [row] = SocketTicket.objects.all()
    assert minted.plaintext.startswith("cmt_")
    assert row.hashed_secret == hash_key(minted.plaintext) and minted.plaintext not in row.hashed_secret


def test_a_ticket_expires_after_a_minute(member: Membership) -> None:
    minted_at = timezone.now()
    minted = services.socket_ticket_create(user=member.user, organization=member.organization, now=minted_at)

    with pytest.raises(services.InvalidSocketTicket):
        services.socket_ticket_consume(
            plaintext=minted.plaintext, now=minted_at + timedelta(seconds=services.SOCKET_TICKET_TTL_SECONDS)
        )


def test_a_ticket_just_inside_its_minute_still_works(member: Membership) -> None:
    minted_at = timezone.now()
    minted = services.socket_ticket_create(user=member.user, organization=member.organization, now=minted_at)

    holder = services.socket_ticket_consume(
        plaintext=minted.plaintext, now=minted_at + timedelta(seconds=services.SOCKET_TICKET_TTL_SECONDS - 1)
    )

    assert holder.user == member.user


def test_minting_sweeps_expired_tickets(member: Membership) -> None:
    long_ago = timezone.now() - timedelta(hours=1)
    stale = services.socket_ticket_create(user=member.user, organization=member.organization, now=long_ago)
    services.socket_ticket_create(user=member.user, organization=member.organization)

    assert not SocketTicket.objects.filter(hashed_secret=hash_key(stale.plaintext)).exists()
    assert SocketTicket.objects.count() == 1


def test_a_ticket_of_someone_who_left_the_organization_is_refused(member: Membership) -> None:
    minted = services.socket_ticket_create(user=member.user, organization=member.organization)
    member.delete()

    assert _connect(minted.plaintext).error_code == ErrorCode.INVALID_TICKET


def test_an_api_key_is_not_a_ticket_and_a_ticket_is_not_a_key(member: Membership) -> None:
    key = services.api_key_create(organization=member.organization)
    minted = services.socket_ticket_create(user=member.user, organization=member.organization)

    assert _connect(key.plaintext).error_code == ErrorCode.INVALID_TICKET
    as_key = ws_key_authenticate(query_string=f"key={minted.plaintext}".encode())
    assert as_key.error_code == ErrorCode.INVALID_API_KEY
