"""Writes and rules for voice sessions and transcripts."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import DateTimeField, Exists, Func, Q, QuerySet, Subquery, UUIDField
from django.utils import timezone

from accounts.models import ApiKey, AuditLog, Organization
from accounts.selectors import InvalidApiKey, api_key_check_usable
from agent_worker import contracts
from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import BillingAccount
from callmissed.errors import CapacityExhausted, Conflict, IdempotencyConflict, PaymentRequired
from callmissed.statements import CompiledStatement, Placeholder, compile_statement
from voice import lifecycle, livekit
from voice.models import TranscriptSegment, VoiceSession, holding_capacity_condition

logger = logging.getLogger(__name__)

CAPACITY_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class CreatedSession:
    session: VoiceSession
    token: str
    ws_url: str
    replayed: bool  # True when an Idempotency-Key returned an earlier session
    # With an Idempotency-Key: the exact response body, stored with the key and answered on replay.
    body: bytes = b""


# Renders the 201 body of a created session; the view owns the representation, the service
# stores its bytes with the key in the same transaction as the session.
ResponseRenderer = Callable[[CreatedSession], bytes]


def _fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _token_for(session: VoiceSession) -> str:
    dispatch = contracts.DispatchMetadata(
        session_id=str(session.id), config=session.config(), organization_id=str(session.organization_id)
    )
    return livekit.participant_token(room_name=session.room_name, identity=f"user-{session.id}", dispatch=dispatch)


# The provider cap is platform-wide: every create takes this one lock first, so admissions of
# every organization run one at a time (a lock per organization would let creates of different
# organizations all count the same sessions and all pass). Nothing else locks what they read.
_PROVIDER_CAPACITY_LOCK = 0x63616C6C  # any constant no other advisory lock uses ("call")


def _count(sessions: QuerySet[VoiceSession]) -> Subquery:
    return Subquery(sessions.order_by().annotate(n=Func("pk", function="COUNT")).values("n"))


@functools.cache
def _admission_statement(using: str) -> CompiledStatement:
    """The organization's billing account, whether the request's key is still usable and every
    count admission needs, in one statement."""
    now = Placeholder("now", DateTimeField())
    organization_id = Placeholder("organization_id", UUIDField())
    key_id = Placeholder("key_id", UUIDField())
    holding = holding_capacity_condition(now=now)
    live = VoiceSession.objects.using(using).live()
    mine = live.filter(organization_id=organization_id)
    usable_key = (
        ApiKey.objects.using(using)
        .filter(pk=key_id, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    )
    return compile_statement(
        BillingAccount.objects.using(using)
        .filter(organization_id=organization_id)
        .annotate(
            org_live=_count(mine.filter(holding)),
            provider_live=_count(live.filter(holding)),
            org_overdue=_count(mine.filter(status=VoiceSession.Status.CREATED, join_deadline__lt=now)),
            key_usable=Exists(usable_key),
        )
    )


def _admission_state(*, organization: Organization, api_key: ApiKey | None, now: datetime) -> BillingAccount:
    """Under the provider lock: the organization's billing account with the counts admission
    needs (``org_live``, ``provider_live``, ``org_overdue``) and whether the request's key is still
    usable (``key_usable``), read in one statement.

    On PostgreSQL the lock is a statement of its own, taken first by every create and held to the
    end of its transaction, so admissions run one at a time: a statement's snapshot is taken when
    it starts, so counts in the statement that waited for the lock would miss a create that
    committed meanwhile. (SQLite, the development default, serialises writers by itself.)"""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PROVIDER_CAPACITY_LOCK])
    [account] = _admission_statement(connection.alias).raw(
        now=now, organization_id=organization.pk, key_id=api_key.pk if api_key is not None else None
    )
    # The caller's organization, already loaded, cached on the account only: assigning it would
    # also cache this account on the organization, which the key cache shares across requests.
    BillingAccount.organization.field.set_cached_value(account, organization)
    return account


def _check_key_still_valid(*, state: BillingAccount, api_key: ApiKey, now: datetime) -> None:
    # The key was checked when the request (or the socket) arrived, possibly from a process's
    # key cache; a revocation since then must not admit one more session, on a socket left open
    # for exactly that. Which refusal it is takes a read of its own, on this rare path only.
    if state.key_usable:  # type: ignore[attr-defined]
        return
    current = ApiKey.objects.filter(pk=api_key.pk).first()
    if current is None:
        raise InvalidApiKey()
    api_key_check_usable(api_key=current, now=now)
    raise InvalidApiKey()  # usable again a moment later (an expiry moved): this create still refused


def voice_session_create(
    *,
    organization: Organization,
    config: dict[str, Any],
    api_key: ApiKey | None = None,
    transport: contracts.Transport = contracts.Transport.LIVEKIT,
    idempotency_key: str | None = None,
    render: ResponseRenderer | None = None,
    now: datetime | None = None,
) -> CreatedSession:
    """Admit and record a new session; ``config`` is the output of ``SessionConfigSerializer``.

    With an ``idempotency_key`` (and the view's ``render``), a key still bound to an earlier
    session answers that session's stored first response or an error, never a new token."""
    fingerprint = _fingerprint(config)
    now = now or timezone.now()
    idempotency_key = idempotency_key or None
    with transaction.atomic():
        # Serialise admission so two racing creates cannot both pass the caps; every create takes
        # the lock first, so the key lookup below sees any winner.
        state = _admission_state(organization=organization, api_key=api_key, now=now)
        if api_key is not None:
            _check_key_still_valid(state=state, api_key=api_key, now=now)
        if idempotency_key:
            earlier = _bound_session(organization=organization, idempotency_key=idempotency_key, now=now)
            if earlier is not None:
                return _replay(earlier, fingerprint, now=now)
        if state.org_overdue:  # type: ignore[attr-defined]
            # Sessions nobody joined stop counting at once (the counts above leave them out);
            # ending them here too means no deployment needs beat to close them.
            lifecycle.voice_sessions_expire_unjoined(organization=organization, now=now)
        billing_services.session_admission_check(account=state, live_sessions=state.org_live)  # type: ignore[attr-defined]
        if state.provider_live >= settings.PROVIDER_MAX_LIVE_SESSIONS:  # type: ignore[attr-defined]
            raise CapacityExhausted(retry_after=CAPACITY_RETRY_AFTER_SECONDS)
        session = VoiceSession(
            organization=organization,
            api_key=api_key,
            transport=transport,
            room_name=livekit.new_room_name(),
            system_prompt=config["system_prompt"],
            voice=config["voice"],
            language=config["language"],
            llm_model=config["llm_model"],
            tts_provider=config["tts_provider"],
            max_duration_seconds=config["max_duration_seconds"],
            tools=config.get("tools") or [],
            metadata=config.get("metadata") or {},
            backchannels=config.get("backchannels") or {},
            idempotency_key=idempotency_key,
            idempotency_key_used_at=now if idempotency_key else None,
            request_fingerprint=fingerprint,
            join_deadline=now + timedelta(seconds=settings.SESSION_JOIN_TIMEOUT_SECONDS),
        )
        # Uniqueness (id, room, idempotency key) and the foreign keys are the database's to
        # enforce on the insert, not pre-reads that cost a statement each and still race.
        session.full_clean(exclude=["organization", "api_key"], validate_unique=False, validate_constraints=False)
        if not idempotency_key:
            session.save()
            return _created(session, transport=transport)
        try:
            with transaction.atomic():
                session.save()
        except IntegrityError:
            # A writer that skipped the org lock won the key: answer with its session.
            earlier = VoiceSession.objects.get(organization=organization, idempotency_key=idempotency_key)
            return _replay(earlier, fingerprint, now=now)

        created = _created(session, transport=transport)
        if render is not None:
            body = render(created)
            session.idempotency_response = body.decode()
            session.save(update_fields=["idempotency_response"])
            created = replace(created, body=body)
    return created


def _created(session: VoiceSession, *, transport: contracts.Transport) -> CreatedSession:
    token = _token_for(session) if transport == contracts.Transport.LIVEKIT else ""
    return CreatedSession(session=session, token=token, ws_url=settings.LIVEKIT_URL, replayed=False)


def _bound_session(*, organization: Organization, idempotency_key: str, now: datetime) -> VoiceSession | None:
    """The session this key still binds, or None; a key past its TTL is released here."""
    earlier = VoiceSession.objects.filter(organization=organization, idempotency_key=idempotency_key).first()
    if earlier is None:
        return None
    used_at = earlier.idempotency_key_used_at or earlier.created_at
    if used_at > now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS):
        return earlier
    earlier.idempotency_key = None
    earlier.idempotency_response = ""
    earlier.save(update_fields=["idempotency_key", "idempotency_response"])
    return None


def _replay(session: VoiceSession, fingerprint: str, *, now: datetime) -> CreatedSession:
    """The stored first response while the session still waits for its caller; else an error."""
    if session.request_fingerprint != fingerprint:
        raise IdempotencyConflict()
    waiting = (
        session.status == VoiceSession.Status.CREATED
        and session.content_deleted_at is None
        and session.join_deadline > now
        and session.idempotency_response
    )
    if not waiting:
        raise Conflict(
            f"The session created with this Idempotency-Key ({session.id}) is no longer waiting for its "
            "caller; create a new session with a new Idempotency-Key.",
            fields={"session_id": str(session.id), "status": session.status},
        )
    # The stored token grants nothing new, but an organization that may no longer run sessions
    # does not get it handed out again.
    problem = billing_services.funds_problem(
        account=billing_selectors.billing_account_get(organization=session.organization)
    )
    if problem:
        raise PaymentRequired(problem)
    return CreatedSession(
        session=session,
        token="",
        ws_url=settings.LIVEKIT_URL,
        replayed=True,
        body=session.idempotency_response.encode(),
    )


def idempotency_responses_clear(*, now: datetime | None = None) -> int:
    """Drop stored responses (their tokens) that can no longer be replayed: key past its TTL,
    or session no longer waiting for its caller. Idempotent; returns how many were cleared."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    return (
        VoiceSession.objects.exclude(idempotency_response="")
        .filter(
            Q(idempotency_key_used_at__lt=cutoff)
            | Q(idempotency_key_used_at__isnull=True)
            | ~Q(status=VoiceSession.Status.CREATED)
            | Q(join_deadline__lte=now)
        )
        .update(idempotency_response="")
    )


def voice_session_delete(*, session: VoiceSession, actor_key: ApiKey | None = None) -> None:
    """End the session if live, then drop its content.

    The end is recorded here whatever LiveKit's state: the room's deletion is queued after commit
    and retried until LiveKit confirms it, and a legacy socket's consumer is told to close (it
    also notices the ended row by itself). The row stays (without prompt, metadata or transcripts)
    because usage and charges refer to it.
    """
    with transaction.atomic():
        lifecycle.voice_session_terminate(session_id=str(session.id), reason=contracts.EndReason.DELETED)
        session.refresh_from_db()
        TranscriptSegment.objects.filter(session=session).delete()
        session.system_prompt = ""
        session.metadata = {}
        session.content_deleted_at = timezone.now()
        session.save(update_fields=["system_prompt", "metadata", "content_deleted_at"])
        AuditLog.objects.create(
            organization=session.organization,
            action=AuditLog.Action.SESSION_DELETED,
            target=str(session.id),
            detail={"api_key": actor_key.prefix if actor_key else ""},
        )
