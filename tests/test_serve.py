"""``python -m callmissed.serve``: WEB_CONCURRENCY Daphne processes behind one port, as an operator
sees them — a process that dies is replaced, a broken configuration stops the server instead of
restarting for ever, and a killed supervisor leaves no server process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from testsupport.processes import free_port
from voice.tests.ws_support import ROOT, DaphneServer

needs_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="more than one server process needs the Redis channel layer"
)


def _until(condition: Callable[[], bool], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@needs_redis
def test_a_server_process_that_dies_is_replaced_and_the_port_keeps_answering(tmp_path: Path) -> None:
    with DaphneServer(env={"WEB_CONCURRENCY": "2"}, log_path=tmp_path / "serve.log") as server:
        assert server.process is not None
        supervisor = psutil.Process(server.process.pid)
        _until(lambda: len(supervisor.children()) == 2)
        first = {child.pid for child in supervisor.children()}
        victim = supervisor.children()[0]
        victim.kill()  # as the OOM killer would
        _until(lambda: len(supervisor.children()) == 2 and victim.pid not in {c.pid for c in supervisor.children()})
        assert len(first & {child.pid for child in supervisor.children()}) == 1
        assert server.answers_http(timeout=120)


def test_a_configuration_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    process = subprocess.run(
        [sys.executable, "-m", "callmissed.serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "callmissed.settings_test", "WEB_CONCURRENCY": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 1
    assert "WEB_CONCURRENCY=2 needs REDIS_URL" in process.stderr
    assert "starting another" not in process.stderr


@needs_redis
def test_a_killed_supervisor_leaves_no_server_process_behind(tmp_path: Path) -> None:
    with DaphneServer(env={"WEB_CONCURRENCY": "2"}, log_path=tmp_path / "serve.log") as server:
        assert server.process is not None
        supervisor = psutil.Process(server.process.pid)
        _until(lambda: len(supervisor.children()) == 2)
        children = supervisor.children()
        supervisor.kill()
        server.process.wait()
        _, alive = psutil.wait_procs(children, timeout=60)
        assert alive == []
