"""Redis and broker failures that reach the API are a 503 envelope, and queueing swept work from a
request never raises: quick checks beside the live fault tests (tests/test_faults.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callmissed import queueing
from callmissed.errors import exception_handler
from testsupport.processes import free_port


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Connection refused"),
        RedisTimeoutError("Timeout reading"),
        OperationalError("broker"),
        DatabaseOperationalError("deadlock detected"),
        DatabaseInterfaceError("connection already closed"),
    ],
)
def test_a_redis_broker_or_database_failure_in_a_view_is_a_503_envelope_with_retry_after(error: Exception) -> None:
    response = exception_handler(error, {})
    assert response is not None
    assert response.status_code == 503
    assert response.data["error"]["code"] == "service_unavailable"
    assert int(response["Retry-After"]) >= 1


def test_queueing_with_the_broker_down_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queueing, "_skip_until", 0.0)  # restored after the test
    app = Celery("outage-test", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    app.conf.broker_connection_timeout = 1
    app.conf.task_publish_retry_policy = {"max_retries": 0}

    @app.task(name="outage_test.noop")
    def noop(**_: Any) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="callmissed.queueing"):
        assert queueing.enqueue(noop, report_id=1) is False
        # Right after a failure the broker is not tried again: the request is not held up.
        assert queueing.enqueue(noop, report_id=2) is False
    messages = [r.getMessage() for r in caplog.records if r.name == "callmissed.queueing"]
    assert len(messages) == 2
    assert "report_id" in messages[0] and "sweep" in messages[0]
