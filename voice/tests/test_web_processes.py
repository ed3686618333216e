"""Several server processes behind one port (``python -m callmissed.serve``, ``WEB_CONCURRENCY``).

Each process holds its own calls. What must still hold: a call is ended by a REST ``DELETE``
that another process serves (the control message crosses processes on the Redis channel layer),
and a stop drains every process's calls with the goodbye, as one process does.
Offline providers, so no network: piper speaks, pocketsphinx hears, the scripted LLM answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from typing import Any

import psutil
import pytest

from accounts.tests.factories import make_key, make_org
from agent_worker import drain
from agent_worker.providers.offline import llm as scripted
from voice.legacy.protocol import CloseCode
from voice.models import VoiceSession
from voice.tests.ws_support import DAPHNE_TEST_MARKS, WsCaller, serve_daphne

REDIS_URL = os.environ.get("REDIS_URL", "")
pytestmark = [
    *DAPHNE_TEST_MARKS,
    pytest.mark.skipif(not REDIS_URL, reason="server processes share control messages only through Redis"),
]

OFFLINE = {"SPEECH_PROVIDERS": "offline", "SARVAM_API_KEY": ""}


async def _open_call(url: str) -> WsCaller:
    caller = await WsCaller.open(url)
    await caller.configure()
    caller.start_streaming()
    return caller


async def _greeted(caller: WsCaller) -> None:
    # The greeting has been spoken in full: the agent is listening.
    await caller.wait_for(lambda: caller.first("agent.stopped") is not None, timeout=120)


def _delete(base_url: str, key: str, session_id: str) -> int:
    request = urllib.request.Request(
        f"{base_url}/v1/voice/sessions/{session_id}", method="DELETE", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def test_a_delete_served_by_another_server_process_ends_the_call(django_db_blocker: Any, tmp_path_factory: Any) -> None:
    key = make_key(make_org(name="Two Servers Clinic")).plaintext
    with (
        serve_daphne(django_db_blocker, tmp_path_factory, "holds-the-call", **OFFLINE) as holder,
        serve_daphne(django_db_blocker, tmp_path_factory, "serves-the-delete", **OFFLINE) as other,
    ):

        async def scenario() -> tuple[WsCaller, int]:
            caller = await _open_call(holder.ws_url(key))
            await _greeted(caller)
            started = caller.first("session.started")
            assert started is not None
            status = await asyncio.to_thread(_delete, other.http_url, key, started["session_id"])
            await caller.wait_closed(timeout=30)
            await caller.aclose()
            return caller, status

        caller, status = asyncio.run(scenario())

    assert status == 204
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "deleted"
    assert caller.closed is not None and caller.closed.code == CloseCode.NORMAL
    row = VoiceSession.objects.get(pk=ended["session_id"])
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "deleted")


def _holder(supervisor: psutil.Process, caller: WsCaller) -> int:
    """The server process that accepted ``caller``'s connection."""
    client_port = caller.ws.local_address[1]
    for child in supervisor.children():
        if any(c.raddr and c.raddr.port == client_port for c in child.net_connections(kind="tcp")):
            return child.pid
    raise AssertionError(f"no server process holds the connection from port {client_port}")


def test_sigterm_drains_the_calls_of_every_server_process(django_db_blocker: Any, tmp_path_factory: Any) -> None:
    key = make_key(make_org(name="Drain Both Clinic")).plaintext
    with serve_daphne(
        django_db_blocker,
        tmp_path_factory,
        "two-processes-drain",
        WEB_CONCURRENCY="2",
        DRAIN_WAIT_SECONDS="2",
        AGENT_GOODBYE_LEAD_SECONDS="15",
        **OFFLINE,
    ) as server:
        assert server.process is not None
        supervisor = psutil.Process(server.process.pid)

        async def scenario() -> tuple[list[WsCaller], WsCaller, set[int]]:
            # The kernel spreads new connections over the processes: call until both hold one.
            calls: list[WsCaller] = []
            holders: set[int] = set()
            while len(holders) < 2 and len(calls) < 12:
                calls.append(await _open_call(server.ws_url(key)))
                holders.add(_holder(supervisor, calls[-1]))
            await asyncio.gather(*(_greeted(call) for call in calls))
            supervisor.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # the drain has begun; the listener is still open
            late = await WsCaller.open(server.ws_url(key))
            await late.wait_closed(timeout=20)
            for call in calls:
                await call.wait_closed(timeout=60)
                await call.aclose()
            await late.aclose()
            return calls, late, holders

        calls, late, holders = asyncio.run(scenario())
        assert server.process.wait(timeout=60) == 0

    assert len(holders) == 2, "every call went to one process: the port does not spread them"
    assert late.closed is not None and late.closed.code == CloseCode.SERVICE_UNAVAILABLE
    for call in calls:
        assert scripted.GOODBYE in call.transcripts("agent")
        ended = call.first("session.ended")
        assert ended is not None and ended["reason"] == "error"
        assert call.closed is not None and call.closed.code == CloseCode.SERVICE_UNAVAILABLE
    rows = VoiceSession.objects.filter(organization__name="Drain Both Clinic")
    assert [(r.status, r.error_message) for r in rows] == [("failed", drain.SHUTDOWN_MESSAGE)] * len(calls)
