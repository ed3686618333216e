"""Report worker events to Django through the Celery broker, without Django.

``EventReporter.report(event)`` returns at once: a single publisher thread sends the events in
the order they were reported, with ``send_task`` to the task name ``contracts`` gives their type
and ``{"payload": event}`` as the body, so the asyncio loop running the conversation never waits
on Redis. Transcript segments and usage that all the process's sessions report within
``batch_window`` seconds leave as one ``EventBatch`` task (a lone one as its own task), at most
``max_batch`` events each: Django's cost is mostly per task and per statement, not per event,
and one session emits a few events a second. The window is also what a crash of this process
can lose (events not yet handed to the broker) and how late a transcript line reaches the
database. Any other event (a start, an end) first sends what is waiting, so a session's events
still arrive in the order they happened. A broker that is briefly away is retried with bounded
backoff; an event that still cannot be sent is logged with its id and dropped, and the
conversation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from agent_worker import contracts

logger = logging.getLogger(__name__)


class _NoDjango(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "django" or fullname.startswith("django."):
            raise ImportError("the agent worker does not import Django")
        return None


@contextlib.contextmanager
def _django_unimportable() -> Iterator[None]:
    """kombu.utils.json imports django.utils.functional when it can (an optional extra); the agent
    worker must not load Django at all, so that optional import is made to fail here. In a process
    where Django is already loaded (Django's own tests) there is nothing to protect."""
    if "django" in sys.modules:
        yield
        return
    finder = _NoDjango()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


with _django_unimportable():
    import kombu.utils.json  # noqa: F401  (imported here, under the guard, before celery uses it)
    from celery import Celery

TASK_NAMES: dict[type[contracts.WorkerEvent], str] = {model: name for name, model in contracts.TASK_PAYLOADS.items()}
_BATCHED = (contracts.TranscriptSegment, contracts.UsageReported)


class Reporter(Protocol):
    """What the worker's observer needs; tests may pass a recording implementation."""

    def report(self, event: contracts.WorkerEvent) -> None: ...

    async def aclose(self, within: float = ...) -> None: ...


class EventReporter:
    def __init__(
        self,
        *,
        broker_url: str,
        attempts: int = 5,
        first_retry_delay: float = 0.5,
        connect_timeout: float = 4.0,
        queue: str = "celery",
        batch_window: float = 0.2,
        max_batch: int = 200,
    ) -> None:
        self.broker_url = broker_url
        self._attempts = max(1, attempts)
        self._first_retry_delay = first_retry_delay
        # fixups=[]: no Django fixup; set_as_current=False: never displace a host process's app.
        self._app = Celery("callmissed-agent-reporter", broker=self.broker_url, fixups=[], set_as_current=False)
        self._app.conf.update(
            task_default_queue=queue,  # the queue Django's Celery worker consumes
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=connect_timeout,
            broker_connection_retry_on_startup=True,
            # Matches Django's broker settings so a message is never redelivered early.
            broker_transport_options={"visibility_timeout": 3600},
        )
        # One thread: events leave in the order they happened (started before transcripts before ended).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-reporter")
        self._pending: set[asyncio.Future[bool]] = set()
        self._batch_window = batch_window
        self._max_batch = max(1, max_batch)
        # The segments and usage waiting for the window to close, and its timer.
        self._waiting: list[contracts.WorkerEvent] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = threading.Event()
        self.sent = 0
        self.dropped = 0

    def report(self, event: contracts.WorkerEvent) -> None:
        """Queue one event for sending; never blocks. Call from the event loop."""
        if self._batch_window > 0 and isinstance(event, _BATCHED):
            self._waiting.append(event)
            if len(self._waiting) >= self._max_batch:
                self._send_waiting()
            elif self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._batch_window, self._send_waiting)
            return
        self._send_waiting()
        self._submit(self._publish, event)

    def _submit(self, fn: Any, *args: Any) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def _send_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events, self._waiting = self._waiting, []
        if len(events) == 1:
            self._submit(self._publish, events[0])
        elif events:
            self._submit(self._publish_batch, events)

    async def flush(self, within: float = 30.0) -> bool:
        """Wait until everything reported so far was sent or given up; False on timeout."""
        self._send_waiting()
        if not self._pending:
            return True
        _, not_done = await asyncio.wait(set(self._pending), timeout=within)
        return not not_done

    async def aclose(self, within: float = 30.0) -> None:
        if not await self.flush(within):
            logger.error("Closing the event reporter with %d events unsent", len(self._pending))
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _publish(self, event: contracts.WorkerEvent) -> bool:
        # The task id is the event id: a resend after an ambiguous failure is the same task,
        # and Django's tasks apply an event id once anyway.
        sent = self._send(TASK_NAMES[type(event)], event.model_dump(mode="json"), event.event_id, event.session_id)
        return self._count(sent, 1)

    def _publish_batch(self, events: list[contracts.WorkerEvent]) -> bool:
        sessions = {e.session_id for e in events}
        batch = contracts.EventBatch(
            segments=[e for e in events if isinstance(e, contracts.TranscriptSegment)],
            usage=[e for e in events if isinstance(e, contracts.UsageReported)],
        )
        # Named by its events, so a resend is the same task.
        task_id = uuid.uuid5(uuid.NAMESPACE_OID, ",".join(e.event_id for e in events)).hex
        sent = self._send(
            contracts.TASK_EVENT_BATCH, batch.model_dump(mode="json"), task_id, ",".join(sorted(sessions))
        )
        return self._count(sent, len(events))

    def _count(self, sent: bool, events: int) -> bool:
        if sent:
            self.sent += events
        else:
            self.dropped += events
        return sent

    def _send(self, name: str, payload: dict[str, Any], task_id: str, sessions: str) -> bool:
        delay = self._first_retry_delay
        for attempt in range(1, self._attempts + 1):
            try:
                self._app.send_task(
                    name,
                    kwargs={"payload": payload},
                    task_id=task_id,
                    # Django's workers measure queue lag from it (callmissed/metrics.py).
                    headers={contracts.PUBLISHED_AT_HEADER: time.time()},
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
                )
            except Exception as error:
                if attempt == self._attempts or self._closed.is_set():
                    break
                logger.warning(
                    "Broker unavailable sending %s %s (attempt %d/%d): %s",
                    name,
                    task_id,
                    attempt,
                    self._attempts,
                    error,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                return True
        logger.error("Gave up sending %s %s for sessions %s", name, task_id, sessions)
        return False
