"""Operating a real Daphne: metrics and logs after one legacy call, and the drain on SIGTERM.

Offline providers, so no network: piper speaks, pocketsphinx hears, the scripted LLM answers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.tests.factories import make_key, make_org
from agent_worker import drain
from agent_worker.providers.offline import llm as scripted
from voice.models import VoiceSession
from voice.tests.test_legacy_ws_offline import CALLER_SAYS, CLIENT, TAIL, write_speech
from voice.tests.ws_support import DAPHNE_TEST_MARKS, ROOT, DaphneServer, WsCaller, serve_daphne

pytestmark = DAPHNE_TEST_MARKS

OFFLINE = {"SPEECH_PROVIDERS": "offline", "SARVAM_API_KEY": ""}


@pytest.fixture(scope="module")
def offline_server(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[DaphneServer]:
    with serve_daphne(django_db_blocker, tmp_path_factory, "daphne-ops", **OFFLINE) as daphne:
        yield daphne


def _scrape(server: DaphneServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_and_logs_after_one_legacy_call(offline_server: DaphneServer, tmp_path: Any) -> None:
    key = make_key(make_org(name="Metrics Clinic")).plaintext
    question = write_speech(tmp_path / "question.wav", CALLER_SAYS)
    result = subprocess.run(
        [*CLIENT, "--key", key, "--url", offline_server.url(), "--wav", str(question), *TAIL],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = VoiceSession.objects.filter(organization__name="Metrics Clinic")

    scraped = _scrape(offline_server)
    # The caller's reply was measured stage by stage by the process that ran the pipeline.
    for stage in ("stt_final", "llm_first_token", "tts_first_audio", "end_to_end"):
        assert scraped[("callmissed_turn_stage_seconds_count", (("stage", stage),))] >= 1, stage
    assert scraped[("callmissed_live_sessions", (("status", "active"), ("transport", "websocket")))] == 0

    lines = [json.loads(line) for line in offline_server.log().splitlines() if line.startswith("{")]
    about_the_call = [line for line in lines if line.get("session_id") == str(row.id)]
    assert about_the_call, "no log line names the session"
    assert all(line["organization_id"] == str(row.organization_id) for line in about_the_call)
    assert key not in offline_server.log()


async def _open_call(server: DaphneServer, key: str) -> WsCaller:
    caller = await WsCaller.open(server.ws_url(key))
    await caller.configure()
    caller.start_streaming()
    # The greeting has been spoken in full: the agent is listening.
    await caller.wait_for(lambda: caller.first("agent.stopped") is not None, timeout=120)
    return caller


def test_sigterm_refuses_new_calls_and_ends_live_ones_with_a_goodbye(
    django_db_blocker: Any, tmp_path_factory: Any
) -> None:
    key = make_key(make_org(name="Drain Clinic")).plaintext
    with serve_daphne(
        django_db_blocker,
        tmp_path_factory,
        "daphne-drain",
        DRAIN_WAIT_SECONDS="2",
        AGENT_GOODBYE_LEAD_SECONDS="15",
        **OFFLINE,
    ) as server:

        async def scenario() -> tuple[WsCaller, WsCaller]:
            live = await _open_call(server, key)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # the drain has begun; the listener is still open
            late = await WsCaller.open(server.ws_url(key))
            await late.wait_closed(timeout=20)
            await live.wait_closed(timeout=60)
            await live.aclose()
            await late.aclose()
            return live, late

        live, late = asyncio.run(scenario())
        assert server.process is not None
        assert server.process.wait(timeout=60) == 0

    assert late.closed is not None and late.closed.code == 4503
    assert late.first("error")["code"] == "service_unavailable"  # type: ignore[index]
    assert scripted.GOODBYE in live.transcripts("agent")
    ended = live.first("session.ended")
    assert ended is not None and ended["reason"] == "error"
    assert live.closed is not None and live.closed.code == 4503
    assert [e["code"] for e in live.of("error") if e["fatal"]] == ["service_unavailable"]
    [row] = VoiceSession.objects.filter(organization__name="Drain Clinic")
    assert (row.status, row.end_reason, row.error_message) == ("failed", "error", drain.SHUTDOWN_MESSAGE)
