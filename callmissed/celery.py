import os
from typing import Any

from celery import Celery, signals
from django.db import InterfaceError, OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callmissed.settings")

app = Celery("callmissed")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Task options for tasks whose only expected failure is a database blip: retry with backoff, every
# countdown far below the broker's visibility timeout (1 h) so Redis never redelivers a message
# that is still waiting.
DB_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}


def _connect_metrics() -> None:
    """Queue lag and task failures (callmissed/metrics.py); the worker serves them itself."""
    from callmissed import metrics

    signals.before_task_publish.connect(metrics.stamp_published_at, weak=False)
    signals.task_prerun.connect(metrics.observe_task_start, weak=False)
    signals.task_failure.connect(metrics.count_task_failure, weak=False)


@signals.worker_init.connect
def _serve_metrics(**_: object) -> None:
    from django.conf import settings

    if settings.CELERY_METRICS_PORT:
        from callmissed import metrics

        metrics.serve_worker_metrics(settings.CELERY_METRICS_PORT, address=settings.CELERY_METRICS_ADDRESS)


_connect_metrics()
