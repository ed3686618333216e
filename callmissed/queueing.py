"""Queueing Celery tasks from requests without letting a broker outage fail the request.

Use these only for work that a database row already remembers and a periodic sweep retries
(pending meter events: ``billing.flush_meter_events``; pending room deletions: the reaper): the
task is a prompt, the row is the promise. A broker that cannot be reached is logged, not raised —
a request whose writes are committed must not answer 5xx, nor raise from an ``on_commit``
callback after the commit. After a failure this process stops trying for
``OUTAGE_COOLDOWN_SECONDS``, so a hung Redis costs one request its timeout, not every request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task
from django.db import transaction

from callmissed.errors import DEPENDENCY_OUTAGES

logger = logging.getLogger(__name__)

OUTAGE_COOLDOWN_SECONDS = 5.0

_lock = threading.Lock()
_skip_until = 0.0


def enqueue(task: Task, /, **kwargs: Any) -> bool:
    """``task.delay(**kwargs)``; False (logged) when the broker is unreachable."""
    global _skip_until
    if time.monotonic() < _skip_until:
        logger.warning("Not queueing %s%r: the broker was unreachable moments ago", task.name, kwargs)
        return False
    try:
        task.apply_async(kwargs=kwargs)
    except DEPENDENCY_OUTAGES as error:
        with _lock:
            _skip_until = time.monotonic() + OUTAGE_COOLDOWN_SECONDS
        logger.warning("Could not queue %s%r; its periodic sweep will: %s", task.name, kwargs, error)
        return False
    return True


def enqueue_on_commit(task: Task, /, **kwargs: Any) -> None:
    """Queue ``task`` once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: enqueue(task, **kwargs))
