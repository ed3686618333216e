"""Platform metrics (Prometheus): HTTP requests, live sessions, Celery, webhook deliveries.

Every metric the platform records is defined here (the pipeline's own, turn latency and provider
errors, are in ``agent_worker/metrics.py`` because the agent worker records them too), and
``/metrics`` (``callmissed/health.py``) exposes them to a scraper that presents
``METRICS_BEARER_TOKEN`` or calls from ``METRICS_ALLOWED_IPS``.

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts, to an
empty directory each process can write, wiped at deploy) every process writes its samples
there and a scrape of any one of them adds them all up (prometheus_client's multiprocess mode).
A Celery worker runs its task children that way and serves its own port
(``CELERY_METRICS_PORT``): a separate container has its own process ids, so two containers must
never share one directory.

Labels stay bounded: routes are URL patterns (never raw paths), tasks are task names, outcomes
and transports are fixed sets.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent_worker import contracts

HTTP_REQUESTS = Counter(
    "callmissed_http_requests_total",
    "HTTP requests answered, by route (URL pattern name), method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "callmissed_http_request_duration_seconds",
    "Time to answer an HTTP request, by route and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CELERY_TASK_FAILURES = Counter(
    "callmissed_celery_task_failures_total",
    "Celery task runs that raised (a retried run counts each time), by task name.",
    ["task"],
)
CELERY_QUEUE_LAG = Histogram(
    "callmissed_celery_queue_lag_seconds",
    "Time a task waited in the broker, from when it was due (published, or its ETA) until a worker started it.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
# For customer webhook delivery (one increment per attempt): outcome is one of
# delivered, failed (non-2xx or network error, will retry), exhausted (retries over), refused
# (the SSRF guard), disabled (the endpoint was switched off).
WEBHOOK_DELIVERIES = Counter(
    "callmissed_webhook_deliveries_total",
    "Customer webhook delivery attempts, by outcome.",
    ["outcome"],
)

# Requests that matched no URL pattern share one label value, so scanners cannot grow the series.
UNMATCHED_ROUTE = "unmatched"
PUBLISHED_AT_HEADER = contracts.PUBLISHED_AT_HEADER


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED_ROUTE
    return match.view_name or match.route or UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Counts and times every request by route, method and status."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        route = route_of(request)
        method = request.method if request.method in _METHODS else "OTHER"
        HTTP_LATENCY.labels(route=route, method=method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(route=route, method=method, status=str(response.status_code)).inc()
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class LiveSessionsCollector(Collector):
    """``callmissed_live_sessions{transport}``, counted from the database at scrape time.

    Counting rows (not a gauge moved by each process) stays right across processes, restarts
    and sessions ended by the reaper or another process."""

    def collect(self) -> Iterator[Metric]:
        from voice.selectors import live_session_counts

        family = GaugeMetricFamily(
            "callmissed_live_sessions",
            "Sessions waiting for their caller (created) or in a call (active), by transport.",
            labels=["transport", "status"],
        )
        for (transport, status), count in sorted(live_session_counts().items()):
            family.add_metric([transport, status], count)
        yield family


def exposition() -> bytes:
    """Everything this platform process (or, in multiprocess mode, every process) recorded."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        process_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(process_registry)  # type: ignore[no-untyped-call]
        recorded = generate_latest(process_registry)
    else:
        recorded = generate_latest(REGISTRY)
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(LiveSessionsCollector())
    return recorded + generate_latest(scraped)


# --- Celery ---------------------------------------------------------------------------------


def stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(PUBLISHED_AT_HEADER, time.time())


def observe_task_start(task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    if request is None:
        return
    # A worker merges custom message headers into the request; an eager run keeps them apart.
    published = getattr(request, PUBLISHED_AT_HEADER, None) or (getattr(request, "headers", None) or {}).get(
        PUBLISHED_AT_HEADER
    )
    if not isinstance(published, int | float):
        return
    due = float(published)
    eta = getattr(request, "eta", None)
    if eta:
        from datetime import datetime

        with contextlib.suppress(ValueError):
            due = max(due, datetime.fromisoformat(str(eta)).timestamp())
    CELERY_QUEUE_LAG.labels(task=getattr(task, "name", "unknown")).observe(max(0.0, time.time() - due))


def count_task_failure(sender: Any = None, **_: Any) -> None:
    CELERY_TASK_FAILURES.labels(task=getattr(sender, "name", None) or "unknown").inc()


def fresh_multiprocess_directory() -> str:
    """``PROMETHEUS_MULTIPROC_DIR`` made empty (``""`` when unset), before the processes that
    write there start: a previous run's files would be added to this run's (prometheus_client's
    rule: wipe it per run)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
    return directory


def serve_worker_metrics(port: int, *, address: str) -> WSGIServer:
    """The Celery worker's own ``/metrics`` (its task children in multiprocess mode), served
    from a daemon thread; the server is returned for whoever must close it."""
    from prometheus_client import start_http_server

    directory = fresh_multiprocess_directory()
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        server, _ = start_http_server(port, addr=address, registry=registry)
    else:
        server, _ = start_http_server(port, addr=address)
    return server
