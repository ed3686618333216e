"""A real ``celery worker`` on the test database, and the agent worker's events fed to it.

The worker runs the solo pool: one FIFO consumer, so a sentinel event sent behind others is
applied after them, and once it is in PostgreSQL everything before it has been processed too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from agent_worker import contracts
from agent_worker.reporting import EventReporter
from testsupport.processes import stop_process
from voice.models import TranscriptSegment
from voice.tests.ws_support import ROOT


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float) -> None:
    """Poll ``condition``: what another process writes is not an event this one can await."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class CeleryWorker:
    """``celery -A callmissed worker`` on ``database_url``, consuming from the broker (eager mode off),
    with ``env`` on top of this process's environment; logs to ``log``. ``start`` again after
    ``kill`` or ``stop`` to restart it on the same log."""

    def __init__(self, *, database_url: str, log: Path, name: str, env: Mapping[str, str]) -> None:
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "callmissed.settings_test",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "DATABASE_URL": database_url,
            **env,
        }
        self.log = log
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 120) -> CeleryWorker:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            process = self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "callmissed",
                    "worker",
                    "--pool=solo",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                    f"--hostname={self.name}-{uuid.uuid4().hex[:6]}@%h",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log.read_bytes()[offset:]:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"Celery worker did not start:\n{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        """Gone without a chance to clean up or acknowledge what it holds."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout=30)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def send(reporter: EventReporter, *events: contracts.WorkerEvent) -> None:
    """Report as the agent worker does (from an event loop) and wait until the broker has them."""

    async def report_all() -> bool:
        for event in events:
            reporter.report(event)
        return await reporter.flush(within=60)

    assert asyncio.run(report_all())


def segment(session_id: str, start_ms: int, text: str, role: str = "user") -> contracts.TranscriptSegment:
    return contracts.TranscriptSegment(
        session_id=session_id,
        role=role,  # type: ignore[arg-type]
        text=text,
        language="hi-IN",
        start_offset_ms=start_ms,
        end_offset_ms=start_ms + 700,
    )


def drain_behind(reporter: EventReporter, session_id: str, *, timeout: float) -> None:
    """Send a sentinel after everything else and wait until the worker applied it."""
    mark = segment(session_id, 10_000_000, f"sentinel-{uuid.uuid4().hex}")
    send(reporter, mark)
    wait_until(lambda: TranscriptSegment.objects.filter(text=mark.text).exists(), "the sentinel", timeout=timeout)
    TranscriptSegment.objects.filter(text=mark.text).delete()
