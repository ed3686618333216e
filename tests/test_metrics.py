"""Platform metrics: what a scrape of /metrics shows after requests, sessions and tasks."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from callmissed import metrics
from callmissed.celery import app as celery_app
from testsupport.processes import free_port


class _BrokenTask(Exception):
    pass


@celery_app.task(name="tests.metrics.always_fails")
def always_fails() -> None:
    raise _BrokenTask("broken on purpose")


pytestmark = pytest.mark.django_db


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = Client().get("/metrics")  # the test client calls from 127.0.0.1, which is allowed
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_requests_are_counted_by_route_pattern_not_by_raw_path(api: Any) -> None:
    route = "voice-session-detail"
    before = _value("callmissed_http_requests_total", route=route, method="GET", status="404")
    for missing in ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"):
        assert api.get(f"/v1/voice/sessions/{missing}").status_code == 404
    assert _value("callmissed_http_requests_total", route=route, method="GET", status="404") == before + 2
    assert _value("callmissed_http_request_duration_seconds_count", route=route, method="GET") >= 2
    scraped = _scrape()
    assert not any("00000000" in str(labels) for _, labels in scraped), "a raw path became a label"


def test_paths_no_route_matches_share_one_label(api: Any) -> None:
    before = _value("callmissed_http_requests_total", route="api-not-found", method="GET", status="404")
    api.get("/v1/no-such-thing-1")
    api.get("/v1/no-such-thing-2")
    assert _value("callmissed_http_requests_total", route="api-not-found", method="GET", status="404") == before + 2
    unmatched = _value("callmissed_http_requests_total", route="unmatched", method="GET", status="404")
    Client().get("/no-such-page-1/")
    Client().get("/no-such-page-2/")
    assert _value("callmissed_http_requests_total", route="unmatched", method="GET", status="404") == unmatched + 2


def test_live_sessions_are_counted_by_transport_at_scrape_time(api: Any) -> None:
    for _ in range(2):
        assert api.post("/v1/voice/sessions", {}, format="json").status_code == 201
    scraped = _scrape()
    assert scraped[("callmissed_live_sessions", (("status", "created"), ("transport", "livekit")))] == 2
    assert scraped[("callmissed_live_sessions", (("status", "active"), ("transport", "websocket")))] == 0


def test_a_failing_task_is_counted_and_its_queue_lag_observed() -> None:
    task = always_fails
    lag_before = _value("callmissed_celery_queue_lag_seconds_sum", task=task.name)
    count_before = _value("callmissed_celery_queue_lag_seconds_count", task=task.name)
    failures_before = _value("callmissed_celery_task_failures_total", task=task.name)
    published = time.time() - 42.0  # as if it had waited 42 s in the broker
    # As a worker runs it: the failure is recorded, not raised into the caller.
    result = task.apply(headers={metrics.PUBLISHED_AT_HEADER: published}, throw=False)
    assert isinstance(result.result, _BrokenTask)
    assert _value("callmissed_celery_task_failures_total", task=task.name) == failures_before + 1
    assert _value("callmissed_celery_queue_lag_seconds_count", task=task.name) == count_before + 1
    assert _value("callmissed_celery_queue_lag_seconds_sum", task=task.name) - lag_before >= 42.0


def test_the_celery_workers_metrics_listen_only_where_told() -> None:
    """No token guards the worker's port: by default only this machine can scrape it."""
    port = free_port()
    server = metrics.serve_worker_metrics(port, address="127.0.0.1")
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"callmissed_celery_task_failures" in response.read()
    finally:
        server.shutdown()
        server.server_close()
