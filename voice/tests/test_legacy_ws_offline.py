"""The legacy WebSocket on the embedded offline providers — no keys, no network — driven by the
command-line client, as the README shows: piper's voice asks, pocketsphinx hears, the scripted
LLM echoes, piper answers; the session row is ended, transcribed and billed (at zero)."""

from __future__ import annotations

import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accounts.tests.factories import make_key, make_org
from agent_worker.providers.offline import llm as scripted
from agent_worker.providers.offline.tts import VOICES
from billing.models import UsageRecord
from voice.models import TranscriptSegment, VoiceSession
from voice.tests.ws_support import DAPHNE_TEST_MARKS, ROOT, DaphneServer, serve_offline_daphne

pytestmark = DAPHNE_TEST_MARKS

CLIENT = [sys.executable, "-m", "clients.voice_ws_client"]
TAIL = ["--tail", "1"]
CALLER_SAYS = "Please book an appointment for tomorrow morning."


@pytest.fixture(scope="module")
def offline_server(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[DaphneServer]:
    with serve_offline_daphne(django_db_blocker, tmp_path_factory, "daphne-offline") as daphne:
        yield daphne


def write_speech(path: Path, text: str) -> Path:
    """The caller's question in piper's voice, at 22.05 kHz so the client has to convert it."""
    pcm = VOICES.synthesize(text, 22050)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22050)
        wav.writeframes(pcm)
    return path


@pytest.mark.slow
def test_the_cli_talks_to_the_offline_pipeline(offline_server, tmp_path) -> None:
    key = make_key(make_org(name="Offline Clinic")).plaintext
    question = write_speech(tmp_path / "question.wav", CALLER_SAYS)
    answer = tmp_path / "agent.wav"

    result = subprocess.run(
        [*CLIENT, "--key", key, "--url", offline_server.url(), "--wav", str(question), "--out", str(answer), *TAIL],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    # A real-time caller is never told it sent too little, even while the models load.
    assert "warning:" not in result.stderr and "error:" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert "(16000 Hz, offline)" in lines[0]
    assert lines[1] == f"[agent] {scripted.GREETING}"
    heard = next(line.removeprefix("[you] ") for line in lines if line.startswith("[you] "))
    assert {"appointment", "tomorrow"} <= set(heard.split())
    assert f"[agent] You said: {heard}. " in "\n".join(lines)
    assert lines[-1].startswith("session ended: completed after ")
    with wave.open(str(answer), "rb") as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() / 16000 > 6.0  # greeting and echo, spoken

    [row] = VoiceSession.objects.all()
    assert (row.transport, row.status, row.end_reason, row.providers) == ("websocket", "ended", "completed", "offline")
    roles = [s.role for s in TranscriptSegment.objects.filter(session=row)]
    assert roles[:3] == ["agent", "user", "agent"]
    components = set(UsageRecord.objects.filter(session_id=row.pk).values_list("component", "model"))
    assert ("stt_seconds", "offline-pocketsphinx") in components and ("tts_characters", "piper") in components
