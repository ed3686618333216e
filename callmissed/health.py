"""Operator endpoints: ``/healthz`` (alive), ``/readyz`` (dependencies), ``/metrics`` (Prometheus).

Plain Django views outside ``/v1``: no API key, no rate limit, not in the public OpenAPI
document, and answered before host validation and the HTTPS redirect
(``OperatorEndpointsMiddleware``). ``/readyz`` never answers 500: each dependency is checked with
a short timeout, in parallel, and a failure names the dependency (503); the checks' states,
timings and errors go only to an operator (the ``/metrics`` rule), and one check serves every
probe for a second, so a stranger calling it in a loop opens no connections of ours.
``/metrics`` answers only a scraper with ``METRICS_BEARER_TOKEN`` or an address in
``METRICS_ALLOWED_IPS`` reached directly, not through a proxy (scrape each process, not the
balancer).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection

from agent_worker import logs
from callmissed import metrics
from outbound.ssrf import parse_networks

logger = logging.getLogger(__name__)

# Checks run on their own threads so one hung dependency cannot hold up the others; a check
# past the timeout is reported failed and its thread finishes on its own socket timeout.
_CHECKS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers HTTP: nothing else is checked (a liveness probe must not restart a
    healthy process because the database is down)."""
    return JsonResponse({"status": "ok"})


def check_database(timeout: float) -> str:
    """A fresh connection (not the request's), so a database that went away is noticed."""
    params = dict(connections.settings[DEFAULT_DB_ALIAS])
    if params["ENGINE"].endswith("postgresql"):
        # libpq's smallest connect timeout is 2 s; the statement gets the check's own budget.
        # Not from the pool either: a pooled connection proves only that the database was up.
        pooled_options = {k: v for k, v in params.get("OPTIONS", {}).items() if k != "pool"}
        params["OPTIONS"] = {
            **pooled_options,
            "connect_timeout": max(2, round(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
    wrapper = load_backend(params["ENGINE"]).DatabaseWrapper(params, DEFAULT_DB_ALIAS)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        wrapper.close()
    return "ok"


def _ping_redis(url: str, timeout: float) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def check_cache(timeout: float) -> str:
    """The cache holds rate-limit counters; locmem (development) is always there."""
    cache: dict[str, Any] = settings.CACHES["default"]
    backend = str(cache["BACKEND"])
    if not backend.endswith("RedisCache"):
        return "in-process"
    _ping_redis(str(cache["LOCATION"]), timeout)
    return "ok"


def check_channel_layer(timeout: float) -> str:
    """The layer DELETE, billing and key revocation reach live legacy calls through."""
    layer: dict[str, Any] = settings.CHANNEL_LAYERS["default"]
    if "InMemory" in str(layer["BACKEND"]):
        return "in-process"
    for host in layer.get("CONFIG", {}).get("hosts", []):
        _ping_redis(host["address"] if isinstance(host, dict) else str(host), timeout)
    return "ok"


def check_broker(timeout: float) -> str:
    """The Celery broker: sessions' events and every queued side effect go through it."""
    url = settings.CELERY_BROKER_URL
    if url.startswith("memory://"):
        return "in-process"
    options = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
    }
    with Connection(url, connect_timeout=timeout, transport_options=options) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        connection.default_channel.client.ping()
    return "ok"


READINESS_CHECKS: dict[str, Callable[[float], str]] = {
    "database": check_database,
    "cache": check_cache,
    "channel_layer": check_channel_layer,
    "broker": check_broker,
}


def _run(check: Callable[[float], str], timeout: float) -> tuple[str, float]:
    started = time.perf_counter()
    state = check(timeout)
    return state, round((time.perf_counter() - started) * 1000, 1)


def readiness(timeout: float) -> tuple[bool, dict[str, dict[str, Any]]]:
    futures = {name: _CHECKS.submit(_run, check, timeout) for name, check in READINESS_CHECKS.items()}
    deadline = time.monotonic() + timeout + 0.5
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        try:
            state, ms = future.result(timeout=max(0.0, deadline - time.monotonic()))
            results[name] = {"ok": True, "state": state, "ms": ms}
        except FutureTimeout:
            results[name] = {"ok": False, "error": f"no answer within {timeout:g} s"}
        except Exception as error:
            # The class and a redacted message: enough to act on, no connection string.
            detail = logs.redact(str(error).splitlines()[0] if str(error) else "")[:200]
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {detail}".rstrip(": ")}
    return all(r["ok"] for r in results.values()), results


class SharedReadiness:
    """One readiness check at a time per process, its result served to every probe for
    ``reuse_seconds``: probes arriving together wait for the one check under way."""

    def __init__(self, reuse_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reuse_seconds = reuse_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._taken_at: float | None = None
        self._result: tuple[bool, dict[str, dict[str, Any]]] = (False, {})

    def _fresh(self) -> bool:
        return self._taken_at is not None and self.clock() - self._taken_at < self.reuse_seconds

    def get(self, timeout: float) -> tuple[bool, dict[str, dict[str, Any]]]:
        with self._lock:
            if not self._fresh():
                self._result = readiness(timeout)
                self._taken_at = self.clock()
            return self._result

    def forget(self) -> None:
        with self._lock:
            self._taken_at = None


READINESS = SharedReadiness()


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    ok, checks = READINESS.get(settings.READYZ_CHECK_TIMEOUT_SECONDS)
    failed = [name for name, result in checks.items() if not result["ok"]]
    body: dict[str, Any] = {"status": "ok"} if ok else {"status": "unavailable", "failed": failed}
    if _scraper_allowed(request):
        body["checks"] = checks  # hosts' states and errors: for operators only
    if ok:
        return JsonResponse(body)
    logger.warning("Not ready: %s", ", ".join(f"{n} ({checks[n]['error']})" for n in failed))
    return JsonResponse(body, status=503)


# Headers a reverse proxy adds (nginx's X-Real-IP, RFC 7239, RFC 9110's Via): their presence says
# the peer address is the proxy's.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via")


def _scraper_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_BEARER_TOKEN
    presented = request.headers.get("Authorization", "")
    if token and presented.startswith("Bearer "):
        return secrets.compare_digest(presented.removeprefix("Bearer ").strip().encode(), token.encode())
    if any(header in request.headers for header in PROXY_HEADERS):
        # Through a proxy, the peer address is the proxy's (often 127.0.0.1): it says nothing
        # about who is asking, so only the token opens the door.
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in parse_networks(settings.METRICS_ALLOWED_IPS))


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _scraper_allowed(request):
        # The same answer for a wrong token and a stranger: nothing to learn about the setup.
        return JsonResponse({"error": "forbidden"}, status=403)
    from prometheus_client import CONTENT_TYPE_LATEST

    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


# Answered before host validation and the HTTPS redirect: probes and scrapers call a process by
# its address (127.0.0.1, a pod IP), which is no public host name, over plain HTTP inside the network.
OPERATOR_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class OperatorEndpointsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info not in OPERATOR_PATHS:
            return self.get_response(request)
        match = resolve(request.path_info)
        request.resolver_match = match
        response: HttpResponse = match.func(request, *match.args, **match.kwargs)
        return response
