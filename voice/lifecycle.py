"""Lifecycle writes driven by the agent worker's events, the reaper and expiry at admission and
of the sessions a read shows: status transitions (created → active → ended|failed, never
backwards), applied once per event id, and the deletion of ended sessions' LiveKit rooms until
LiveKit confirms it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import InvalidOperation
from typing import Any

from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization
from agent_worker import contracts
from billing import services as billing_services
from billing.pricing import PriceMissing
from callmissed import queueing
from voice import events, livekit, ws_control
from voice.models import ProcessedEvent, TranscriptSegment, VoiceSession

logger = logging.getLogger(__name__)

# One expiry closes at most this many sessions; the next read, admission or reaper tick the rest.
EXPIRE_BATCH_SIZE = 500
# A room deletion still unconfirmed this long after it was queued is queued again by the reaper
# (longer than the task's own retries take, so the two rarely overlap).
ROOM_DELETE_REQUEUE_SECONDS = 300


def _first_time(event_id: str, kind: str, session: VoiceSession | None) -> bool:
    """Record an applied event; False when it was applied before (inside the caller's atomic)."""
    _, created = ProcessedEvent.objects.get_or_create(event_id=event_id, defaults={"kind": kind, "session": session})
    return created


def voice_session_mark_active(
    *, session_id: str, at: datetime | None = None, providers: str = "", event_id: str | None = None
) -> VoiceSession | None:
    """created → active, when the caller joined before the join deadline; a later join fails the
    session as ``unjoined``. A session already over is never revived or rewritten, except that the
    worker's own end overtaking its start (two Celery workers) still records when it started.
    ``voice_session_start_admitted`` then says whether the worker may go on."""
    started = at or timezone.now()
    with transaction.atomic():
        session = VoiceSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None:
            return None
        if event_id and not _first_time(event_id, contracts.TASK_SESSION_STARTED, session):
            return session
        if (
            session.status == VoiceSession.Status.CREATED
            and session.transport == contracts.Transport.LIVEKIT
            and started > session.join_deadline
        ):
            # The token outlives the join deadline and no beat may have run the reaper yet: the
            # late join ends the session as the reaper would have. (A legacy socket's caller is
            # connected from the start; its start may be slow while the offline models load.)
            return voice_session_end(
                session_id=session_id,
                reason=contracts.EndReason.UNJOINED,
                at=session.join_deadline,
                error="The caller joined after the session's join deadline.",
            )
        if session.status == VoiceSession.Status.CREATED:
            session.status = VoiceSession.Status.ACTIVE
            session.started_at = started
            if providers:
                session.providers = providers
            # A replay of its Idempotency-Key is refused from now on: its stored token goes.
            session.idempotency_response = ""
            session.save(update_fields=["status", "started_at", "providers", "idempotency_response"])
            events.session_started.send(sender=VoiceSession, session=session)
        elif (
            session.started_at is None
            and session.ended_at is not None
            and started <= session.ended_at
            and _ended_by_worker(session)
        ):
            # The end overtook the start: record when it started, keep the end.
            session.started_at = started
            session.providers = session.providers or providers
            session.save(update_fields=["started_at", "providers"])
    return session


def voice_session_started_apply(*, event: contracts.SessionStarted) -> VoiceSession | None:
    """A conversation started (the worker's event, or a legacy socket's pipeline): the session
    goes active, once per event id. A LiveKit conversation the platform no longer admits, or one
    for a session it does not know, has its room deleted: the token outlives its session (and a
    join deadline), and deleting the room is what ends that conversation."""
    session = voice_session_mark_active(
        session_id=event.session_id, at=event.occurred_at, providers=event.providers, event_id=event.event_id
    )
    if session is None:
        logger.warning("session_started for unknown session %s", event.session_id)
        if event.room_name:
            voice_session_room_delete_queue(room_name=event.room_name)
    elif session.transport == contracts.Transport.LIVEKIT and not voice_session_start_admitted(
        session=session, at=event.occurred_at
    ):
        logger.info(
            "Session %s started but is %s (%s); deleting its room", session.id, session.status, session.end_reason
        )
        voice_session_room_delete_queue(room_name=session.room_name)
    return session


def voice_session_start_admitted(*, session: VoiceSession, at: datetime) -> bool:
    """Whether a conversation the worker started at ``at`` is one the platform admits: the session
    is live, or this is the recorded start of a run whose own end overtook it. Anything else (the
    platform ended, deleted or failed it, or a token reused after the end) must not run."""
    return session.is_live or (session.started_at is not None and session.started_at == at)


def _ended_by_worker(session: VoiceSession) -> bool:
    """Ended by the worker's own event, rather than by the platform (reaper, delete, billing)."""
    return ProcessedEvent.objects.filter(session=session, kind=contracts.TASK_SESSION_ENDED).exists()


def voice_session_end(
    *,
    session_id: str,
    reason: contracts.EndReason,
    at: datetime | None = None,
    duration_seconds: float | None = None,
    turn_latencies: list[dict[str, Any]] | None = None,
    error: str = "",
    event_id: str | None = None,
    delete_room: bool = False,
) -> VoiceSession | None:
    """created|active → ended|failed, once. A later end event may still add figures it lacked."""
    with transaction.atomic():
        session = VoiceSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None:
            return None
        if event_id and not _first_time(event_id, contracts.TASK_SESSION_ENDED, session):
            return session
        fields: list[str] = []
        if session.is_live:
            ended_at = at or timezone.now()
            session.status = (
                VoiceSession.Status.FAILED if reason in contracts.FAILURE_REASONS else VoiceSession.Status.ENDED
            )
            session.end_reason = reason
            session.ended_at = ended_at
            session.error_message = error[:2000]
            session.idempotency_response = ""  # no replay of a session that is over: its token goes
            fields += ["status", "end_reason", "ended_at", "error_message", "idempotency_response"]
            if duration_seconds is None and session.started_at is not None:
                duration_seconds = max(0.0, (ended_at - session.started_at).total_seconds())
        if duration_seconds is not None and session.duration_seconds is None:
            session.duration_seconds = duration_seconds
            fields.append("duration_seconds")
        if turn_latencies and not session.turn_latencies:
            session.turn_latencies = turn_latencies
            fields.append("turn_latencies")
        ended_now = "status" in fields
        if delete_room and ended_now and session.transport == contracts.Transport.LIVEKIT:
            # Recorded with the end, so the room is deleted even if the queue below is lost.
            session.room_delete_queued_at = timezone.now()
            fields.append("room_delete_queued_at")
        if fields:
            session.save(update_fields=fields)
        if ended_now:
            events.session_ended.send(sender=VoiceSession, session=session)
        room_name = session.room_name
    if "room_delete_queued_at" in fields:
        transaction.on_commit(lambda: _queue_room_delete(room_name))
    return session


def voice_session_ended_apply(*, event: contracts.SessionEnded) -> VoiceSession | None:
    """A conversation ended (the worker's event, or a legacy socket's): recorded once per event id.
    A LiveKit room goes through the one deletion path, queued with the end (once, whoever ends
    first); a socket closes itself."""
    session = voice_session_end(
        session_id=event.session_id,
        reason=event.reason,
        at=event.occurred_at,
        duration_seconds=event.duration_seconds,
        turn_latencies=[t.model_dump() for t in event.turn_latencies],
        error=event.error,
        event_id=event.event_id,
        delete_room=True,
    )
    if session is None:
        logger.warning("session_ended for unknown session %s", event.session_id)
    return session


def voice_session_terminate(*, session_id: str, reason: contracts.EndReason, error: str = "") -> VoiceSession | None:
    """End a live session from Django's side (billing, an operator, DELETE) and tear down its
    transport: the LiveKit room's deletion is queued (the agent leaves when it goes); a legacy
    socket's consumer is told to close, and notices the ended row by itself if that message is lost."""
    session = voice_session_end(session_id=session_id, reason=reason, error=error, delete_room=True)
    if session is not None and session.transport == contracts.Transport.WEBSOCKET:
        transaction.on_commit(lambda: ws_control.websocket_session_terminate(session_id=session_id, reason=reason))
    return session


def voice_sessions_expire_unjoined(
    *,
    organization: Organization | None = None,
    session_ids: Iterable[uuid.UUID | str] | None = None,
    now: datetime | None = None,
    limit: int = EXPIRE_BATCH_SIZE,
) -> list[VoiceSession]:
    """Fail ``created`` sessions past their join deadline as ``unjoined`` and queue their rooms'
    deletion (of ``organization``, or only ``session_ids``, or all). Called at admission (so no
    deployment needs beat for a session to stop counting against the caps), for the sessions a
    read is about to show (``voice_sessions_expire_shown``) and by the reaper;
    ``voice_session_end`` makes it exactly-once with the worker's own events, whoever comes first."""
    now = now or timezone.now()
    overdue = VoiceSession.objects.filter(status=VoiceSession.Status.CREATED, join_deadline__lt=now)
    if organization is not None:
        overdue = overdue.filter(organization=organization)
    if session_ids is not None:
        overdue = overdue.filter(pk__in=list(session_ids))
    expired = []
    for session_id in overdue.order_by("pk").values_list("pk", flat=True)[:limit]:
        session = voice_session_end(
            session_id=str(session_id),
            reason=contracts.EndReason.UNJOINED,
            at=now,
            error="Nobody joined the session before its join deadline.",
            delete_room=True,
        )
        if session is not None and session.end_reason == contracts.EndReason.UNJOINED:
            expired.append(session)
    return expired


def voice_sessions_expire_shown(sessions: Iterable[VoiceSession], *, now: datetime | None = None) -> bool:
    """Before a read shows ``sessions``: end those nobody joined before their deadline, so none is
    shown waiting past it (the reaper's next tick would; a read must not wait for it). A read whose
    sessions are all in time, nearly every one, writes and queries nothing. True when one was
    ended: the caller reads its sessions again."""
    now = now or timezone.now()
    overdue = [s.pk for s in sessions if s.status == VoiceSession.Status.CREATED and s.join_deadline < now]
    if not overdue:
        return False
    voice_sessions_expire_unjoined(session_ids=overdue, now=now)
    return True


def voice_session_room_delete(*, room_name: str) -> None:
    """Delete a session's LiveKit room now and record that it is gone; raises ``UpstreamError``
    while LiveKit cannot be reached (the caller retries). A room already gone counts as deleted."""
    livekit.room_delete(room_name=room_name)
    VoiceSession.objects.filter(room_name=room_name, room_delete_queued_at__isnull=False).update(
        room_delete_queued_at=None
    )


def voice_session_room_delete_queue(*, room_name: str) -> None:
    """Delete a room after commit, recorded on its session's row (if it has one) so the reaper
    queues it again until LiveKit confirms it gone."""
    VoiceSession.objects.filter(room_name=room_name).update(room_delete_queued_at=timezone.now())
    transaction.on_commit(lambda: _queue_room_delete(room_name))


def voice_sessions_room_delete_requeue(*, now: datetime | None = None, limit: int = EXPIRE_BATCH_SIZE) -> list[str]:
    """Rooms whose deletion was queued more than ``ROOM_DELETE_REQUEUE_SECONDS`` ago and is still
    not confirmed (LiveKit was down past the task's retries, or the queue lost the task): queue
    them again. Returns their names."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=ROOM_DELETE_REQUEUE_SECONDS)
    rooms = list(
        VoiceSession.objects.filter(room_delete_queued_at__lt=stale)
        .order_by("room_delete_queued_at")
        .values_list("room_name", flat=True)[:limit]
    )
    if rooms:
        VoiceSession.objects.filter(room_name__in=rooms).update(room_delete_queued_at=now)
        for room_name in rooms:
            _queue_room_delete(room_name)
    return rooms


def _queue_room_delete(room_name: str) -> None:
    """Hand the room to the ``voice.delete_room`` task. Never raises: the deletion is recorded on
    the row, and the reaper queues it again if this one is lost."""
    from voice import tasks  # tasks import this module

    try:
        if tasks.delete_room.app.conf.task_always_eager:
            # No worker (``make run``): one attempt inline, not the task's retries inside a request.
            voice_session_room_delete(room_name=room_name)
        else:
            # With the outage cooldown: a frozen broker must not hold a read that expired many sessions.
            queueing.enqueue(tasks.delete_room, room_name=room_name)
    except Exception:
        logger.warning("Could not delete LiveKit room %s yet; it stays queued for the reaper", room_name, exc_info=True)


def transcript_segment_add(*, segment: contracts.TranscriptSegment) -> None:
    """Store a final segment once (a batch of one): a redelivered event id changes nothing; the
    line is dropped when the session is unknown or its content was deleted."""
    worker_events_apply(batch=contracts.EventBatch(segments=[segment]))


def usage_add(*, usage: contracts.UsageReported) -> billing_services.UsageApplied:
    """Bill one usage event (a batch of one) to its session's organization, once per event id;
    nothing when the session is unknown."""
    return worker_events_apply(batch=contracts.EventBatch(usage=[usage]))


def worker_events_apply(*, batch: contracts.EventBatch) -> billing_services.UsageApplied:
    """Segments and usage of one or more sessions (the reporter's batch, or one event alone), each
    applied to the session it names, in one transaction: the segments in one insert that skips
    event ids already stored, the usage in ``usage_events_apply`` (one insert of what is new, one
    ledger post per organization). Each event id takes effect once, in this batch, another or
    alone, whichever worker applies it. Events of unknown sessions are dropped; usage outlives
    deleted content, so a deleted session's usage still bills while its lines are dropped.

    Usage whose price is missing raises ``PriceMissing`` (the task retries) once everything else
    is committed: the transcript and the other usage must not wait for an admin, and the retry
    inserts nothing twice."""
    try:
        applied = _events_apply(batch=batch)
    except (DataError, IntegrityError, InvalidOperation) as refused:
        # Nothing of the batch was written. A batch carries every session of a worker process:
        # apply each event alone, so one the database refuses drops only itself.
        events = [*batch.segments, *batch.usage]
        if len(events) == 1:
            logger.error("Dropped a worker event the database refuses: %s", type(refused).__name__)
            return billing_services.UsageApplied()
        applied = billing_services.UsageApplied()
        for event in events:
            alone = contracts.EventBatch(
                segments=[event] if isinstance(event, contracts.TranscriptSegment) else [],
                usage=[event] if isinstance(event, contracts.UsageReported) else [],
            )
            try:
                one = worker_events_apply(batch=alone)
            except PriceMissing as missing:
                applied.price_missing = applied.price_missing or missing
                continue
            applied.records.extend(one.records)
            applied.exhausted.update(one.exhausted)
    if applied.price_missing is not None:
        raise applied.price_missing
    return applied


def _events_apply(*, batch: contracts.EventBatch) -> billing_services.UsageApplied:
    events = [*batch.segments, *batch.usage]
    applied = billing_services.UsageApplied()
    with transaction.atomic():
        # Locked (in key order) for the transaction: a DELETE that drops a session's content
        # commits either before this reads content_deleted_at or after these lines are in, to be
        # deleted with the rest; never in between, which brought deleted lines back.
        sessions = {
            session.pk: session
            for session in VoiceSession.objects.select_related("organization")
            .select_for_update(no_key=True, of=("self",))
            .filter(pk__in={uuid.UUID(e.session_id) for e in events})
            .order_by("pk")
        }
        known = {e.session_id: sessions[key] for e in events if (key := uuid.UUID(e.session_id)) in sessions}
        unknown = {e.session_id for e in events} - known.keys()
        if unknown:
            logger.warning("Events of unknown sessions %s dropped", ", ".join(sorted(unknown)))
        segments = [
            s for s in batch.segments if s.session_id in known and known[s.session_id].content_deleted_at is None
        ]
        usage = [u for u in batch.usage if u.session_id in known]
        if segments:
            _segments_insert(segments=segments, sessions=known)
        if usage:
            applied = billing_services.usage_events_apply(
                events=usage, organizations={sid: session.organization for sid, session in known.items()}
            )
    return applied


def _segments_insert(*, segments: list[contracts.TranscriptSegment], sessions: dict[str, VoiceSession]) -> None:
    # In event-id order: two workers inserting overlapping batches never wait on each other in a cycle.
    distinct = sorted({segment.event_id: segment for segment in segments}.values(), key=lambda s: s.event_id)
    TranscriptSegment.objects.bulk_create(
        [
            TranscriptSegment(
                event_id=segment.event_id,
                session=sessions[segment.session_id],
                role=segment.role,
                text=segment.text,
                language=segment.language,
                start_offset_ms=segment.start_offset_ms,
                end_offset_ms=max(segment.end_offset_ms, segment.start_offset_ms),
                tool_call=segment.tool_call.model_dump(mode="json") if segment.tool_call else None,
            )
            for segment in distinct
        ],
        ignore_conflicts=True,  # the unique event id: a repeat inserts nothing
    )


def worker_event_queue(*, event: contracts.WorkerEvent) -> None:
    """Hand an event to the Celery task named for its type in ``contracts``, with the event id as
    the task id: for a writer that could not apply it now (the database away, a price missing)
    and must not lose it. The task retries on its own and applies each event id once."""
    from voice import tasks  # tasks import this module

    tasks.EVENT_TASKS[type(event)].apply_async(
        kwargs={"payload": event.model_dump(mode="json")}, task_id=event.event_id
    )
