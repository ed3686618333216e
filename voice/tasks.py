"""Celery tasks: the agent worker's events, the reaper, and LiveKit room deletion.

The worker sends events with ``send_task`` under the names in ``agent_worker.contracts`` and a
``{"payload": …}`` body. Each task validates the payload with the one pydantic model for it and
applies it through an idempotent service (the one the legacy socket calls in-process), so a
redelivered (``acks_late``) or duplicated event changes nothing. A payload that does not validate
is logged and dropped: retrying cannot fix it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, TypeVar, cast

from celery import Task, shared_task
from pydantic import ValidationError

from agent_worker import contracts
from billing.pricing import PriceMissing
from callmissed.celery import DB_RETRY
from callmissed.errors import UpstreamError
from voice import lifecycle, reaper, services

logger = logging.getLogger(__name__)

TASK_REAP_SESSIONS = "voice.reap_sessions"
TASK_DELETE_ROOM = "voice.delete_room"
TASK_CLEAR_IDEMPOTENCY_RESPONSES = "voice.clear_idempotency_responses"

# A database blip must not lose an event.
_DB_RETRY = DB_RETRY

EventT = TypeVar("EventT", bound=contracts.WorkerEvent)


def _parse(model: type[EventT], payload: Any) -> EventT | None:
    try:
        event = cast(EventT, model.model_validate(payload))
        uuid.UUID(event.session_id)
    except (ValidationError, ValueError, AttributeError) as error:
        # The error names fields and types only; transcript text stays out of the logs.
        summary = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            if isinstance(error, ValidationError)
            else "session_id is not a UUID"
        )
        logger.error("Dropped an invalid %s event: %s", model.__name__, summary)
        return None
    return event


def _parse_batch(payload: Any) -> contracts.EventBatch:
    """Each event of a batch on its own: a batch carries many sessions' events, and one that
    does not parse must not take the others with it."""
    body = payload if isinstance(payload, dict) else {}
    if not isinstance(payload, dict):
        logger.error("Dropped an invalid EventBatch: not an object")

    def each(model: type[EventT], items: Any) -> list[EventT]:
        parsed = (_parse(model, item) for item in (items if isinstance(items, list) else []))
        return [event for event in parsed if event is not None]

    return contracts.EventBatch(
        segments=each(contracts.TranscriptSegment, body.get("segments")),
        usage=each(contracts.UsageReported, body.get("usage")),
    )


@shared_task(name=contracts.TASK_SESSION_STARTED, **_DB_RETRY)
def session_started(payload: dict[str, Any]) -> None:
    event = _parse(contracts.SessionStarted, payload)
    if event is not None:
        lifecycle.voice_session_started_apply(event=event)


@shared_task(name=contracts.TASK_TRANSCRIPT_SEGMENT, **_DB_RETRY)
def transcript_segment(payload: dict[str, Any]) -> None:
    event = _parse(contracts.TranscriptSegment, payload)
    if event is not None:
        lifecycle.transcript_segment_add(segment=event)


# Usage also retries a missing price, for longer (an admin adds the row).
_USAGE_RETRY: dict[str, Any] = {
    **_DB_RETRY,
    "autoretry_for": (*_DB_RETRY["autoretry_for"], PriceMissing),
    "retry_backoff_max": 600,
}


@shared_task(name=contracts.TASK_USAGE_REPORTED, **_USAGE_RETRY)
def usage_reported(payload: dict[str, Any]) -> None:
    """A missing price retries (an admin can add the row) rather than dropping billable usage."""
    event = _parse(contracts.UsageReported, payload)
    if event is not None:
        lifecycle.usage_add(usage=event)


@shared_task(name=contracts.TASK_EVENT_BATCH, **_USAGE_RETRY)
def event_batch(payload: dict[str, Any]) -> None:
    """A missing price retries the whole batch once the rest is applied (each event applies once)."""
    lifecycle.worker_events_apply(batch=_parse_batch(payload))


@shared_task(name=contracts.TASK_SESSION_ENDED, **_DB_RETRY)
def session_ended(payload: dict[str, Any]) -> None:
    event = _parse(contracts.SessionEnded, payload)
    if event is not None:
        lifecycle.voice_session_ended_apply(event=event)


# The task that applies each worker event type, for a writer that queues one (lifecycle.worker_event_queue).
EVENT_TASKS: dict[type[contracts.WorkerEvent], Task] = {
    contracts.SessionStarted: session_started,
    contracts.TranscriptSegment: transcript_segment,
    contracts.UsageReported: usage_reported,
    contracts.SessionEnded: session_ended,
}


@shared_task(name=TASK_REAP_SESSIONS)
def reap_sessions() -> dict[str, int]:
    result = reaper.voice_sessions_reap()
    return {"unjoined": len(result.unjoined), "lost": len(result.lost)}


@shared_task(name=TASK_CLEAR_IDEMPOTENCY_RESPONSES)
def clear_idempotency_responses() -> int:
    """Stored create responses hold live tokens: drop those that can no longer be replayed."""
    return services.idempotency_responses_clear()


@shared_task(
    name=TASK_DELETE_ROOM,
    autoretry_for=(UpstreamError,),
    retry_backoff=5,
    retry_backoff_max=80,
    retry_jitter=True,
    # Retries end well within lifecycle.ROOM_DELETE_REQUEUE_SECONDS; the reaper takes over after.
    max_retries=5,
)
def delete_room(*, room_name: str) -> None:
    """Idempotent: a room that is already gone counts as deleted."""
    lifecycle.voice_session_room_delete(room_name=room_name)
