from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import get_random_string

from accounts import signals
from accounts.keys import VISIBLE_PREFIX_CHARS, generate_key, generate_ticket, hash_key, looks_like_ticket
from accounts.models import ApiKey, AuditLog, Membership, Organization, SocketTicket
from callmissed.errors import ApplicationError, ErrorCode


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    plaintext: str  # returned exactly once, never stored


@transaction.atomic
def organization_create(
    *, name: str, actor: User | None = None, starter_credit: bool = True, credit_claim: str = ""
) -> Organization:
    """A new tenant, audited; the apps above open what every organization has (its billing
    account) in the same transaction, through ``organization_created``."""
    organization = Organization(name=name)
    organization.full_clean()
    organization.save()
    AuditLog.objects.create(
        organization=organization, actor=actor, action=AuditLog.Action.ORGANIZATION_CREATED, target=str(organization.id)
    )
    signals.organization_created.send(
        sender=Organization,
        organization=organization,
        actor=actor,
        starter_credit=starter_credit,
        credit_claim=credit_claim,
    )
    return organization


def organization_get_or_create(*, name: str) -> Organization:
    existing = Organization.objects.filter(name=name).first()
    if existing is not None:
        return existing
    try:
        return organization_create(name=name)
    except IntegrityError:  # a concurrent create of the same name won
        return Organization.objects.get(name=name)


# Mailboxes that ignore dots in the local part: a.b@gmail.com and ab@gmail.com are one inbox.
_DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def email_identity(email: str) -> str:
    """The person behind an address, for one-per-person rules: lower case, no ``+tag`` (sub-addresses
    reach the same inbox at most providers), and no dots where the provider ignores them."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in _DOTLESS_DOMAINS:
        domain = _DOTLESS_DOMAINS[domain]
        local = local.replace(".", "")
    return f"{local}@{domain}"


@transaction.atomic
def account_signup(
    *, username: str, email: str, password: str, organization_name: str, starter_credit: bool = True
) -> User:
    """A new customer: their user, their organization, and owner membership of it, together or not at all.

    The starter credit is claimed by the owner's mailbox (``email_identity``): a second organization
    for the same person starts at zero."""
    user = User(username=username, email=email)
    user.set_password(password)
    user.full_clean()
    user.save()
    organization = organization_create(
        name=organization_name, actor=user, starter_credit=starter_credit, credit_claim=email_identity(email)
    )
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.OWNER)
    return user


LOGIN_PASSWORD_CHARS = 20  # about 119 bits


class LoginInUse(Exception):
    """The username belongs to a member of another organization."""


@transaction.atomic
def owner_login_set(*, organization: Organization, username: str) -> str:
    """A dashboard login for ``organization``: the user (created as an owner if new) gets a fresh
    generated password, returned once. For an operator's command line (``create_login``), so that a
    key made there has someone who can see its sessions; a user of another organization is refused."""
    user = User.objects.filter(username=username).first()
    if user is None:
        user = User(username=username)
        user.set_unusable_password()
        user.full_clean()
        user.save()
        Membership.objects.create(user=user, organization=organization, role=Membership.Role.OWNER)
    elif not Membership.objects.filter(user=user, organization=organization).exists():
        raise LoginInUse(f"{username!r} is a login of another organization.")
    password = get_random_string(LOGIN_PASSWORD_CHARS)  # letters and digits, from ``secrets``
    user.set_password(password)
    user.save(update_fields=["password"])
    return password


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str = "",
    created_by: User | None = None,
    expires_at: datetime | None = None,
) -> CreatedApiKey:
    plaintext = generate_key()
    key = ApiKey(
        organization=organization,
        name=name,
        prefix=plaintext[:VISIBLE_PREFIX_CHARS],
        last4=plaintext[-4:],
        hashed_secret=hash_key(plaintext),
        created_by=created_by,
        expires_at=expires_at,
    )
    key.full_clean()
    key.save()
    AuditLog.objects.create(
        organization=organization,
        actor=created_by,
        action=AuditLog.Action.API_KEY_CREATED,
        target=str(key.id),
        detail={"prefix": key.prefix, "name": name},
    )
    return CreatedApiKey(api_key=key, plaintext=plaintext)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User | None = None) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        AuditLog.objects.create(
            organization=api_key.organization,
            actor=actor,
            action=AuditLog.Action.API_KEY_REVOKED,
            target=str(api_key.id),
            detail={"prefix": api_key.prefix},
        )
        revoked = api_key
        # After commit: a receiver acting on a revocation that rolled back would end calls for nothing.
        # Robust: the key is revoked either way; a failing receiver is logged, not raised to the caller.
        transaction.on_commit(lambda: signals.api_key_revoked.send(sender=ApiKey, api_key=revoked), robust=True)
    return api_key


# last_used_at is written at most once a minute per key so auth stays a single indexed read.
LAST_USED_RESOLUTION_SECONDS = 60


def api_key_touch(*, api_key: ApiKey) -> None:
    now = timezone.now()
    last = api_key.last_used_at
    if last is None or (now - last).total_seconds() >= LAST_USED_RESOLUTION_SECONDS:
        # Conditional, so of the requests that all saw a stale value only the first one writes.
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS))
        ApiKey.objects.filter(stale, pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


# Long enough for a page to open its socket right after minting, short enough that a ticket
# left in a log or a proxy's history is useless.
SOCKET_TICKET_TTL_SECONDS = 60


class InvalidSocketTicket(ApplicationError):
    code = ErrorCode.INVALID_TICKET
    status_code = 401
    default_message = "This ticket is invalid, expired or already used: mint a new one for each connection."


@dataclass(frozen=True)
class MintedSocketTicket:
    plaintext: str  # returned exactly once, never stored
    expires_at: datetime


@dataclass(frozen=True)
class SocketTicketHolder:
    organization: Organization
    user: User


def socket_ticket_create(*, user: User, organization: Organization, now: datetime | None = None) -> MintedSocketTicket:
    """A ticket for one WebSocket connection as ``user`` of ``organization``."""
    now = now or timezone.now()
    # Expired tickets can never be used: dropping them here keeps the table to the last minute's.
    SocketTicket.objects.filter(expires_at__lte=now).delete()
    plaintext = generate_ticket()
    expires_at = now + timedelta(seconds=SOCKET_TICKET_TTL_SECONDS)
    SocketTicket.objects.create(
        hashed_secret=hash_key(plaintext), organization=organization, user=user, expires_at=expires_at
    )
    return MintedSocketTicket(plaintext=plaintext, expires_at=expires_at)


def socket_ticket_consume(*, plaintext: str, now: datetime | None = None) -> SocketTicketHolder:
    """Spend a ticket: the first caller gets its holder, every later one (or a stale ticket, or one
    whose user has since left the organization or been deactivated) ``InvalidSocketTicket``."""
    now = now or timezone.now()
    if not looks_like_ticket(plaintext):
        raise InvalidSocketTicket()
    ticket = (
        SocketTicket.objects.select_related("organization", "user")
        .filter(hashed_secret=hash_key(plaintext), expires_at__gt=now)
        .first()
    )
    # The delete is the spend: of two sockets racing with one ticket, exactly one deletes the row.
    if ticket is None or SocketTicket.objects.filter(pk=ticket.pk).delete()[0] != 1:
        raise InvalidSocketTicket()
    still_member = Membership.objects.filter(user_id=ticket.user_id, organization_id=ticket.organization_id).exists()
    if not (ticket.user.is_active and still_member):
        raise InvalidSocketTicket()
    return SocketTicketHolder(organization=ticket.organization, user=ticket.user)
