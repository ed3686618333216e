"""The README's shell blocks, run as a newcomer copies them, against a server on the embedded defaults
(offline speech), with only the key, the server's address and the output file put in.

Blocks that start the server or the whole suite (``make run``, ``make test``) are not run here: the
first is what this test stands in for (its login and key come from the same commands run below), the
second is the suite itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voice.models import VoiceSession
from voice.tests.ws_support import DAPHNE_TEST_MARKS, ROOT, DaphneServer, child_database_url, serve_daphne

pytestmark = DAPHNE_TEST_MARKS

README = ROOT / "README.md"
CLIENT = [str(ROOT / ".venv/bin/python"), "-m", "clients.voice_ws_client"]  # as the README writes it
KEY = re.compile(r"^cm_[A-Za-z0-9_-]{20,}$", re.M)


def shell_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)]


def runnable(block: str) -> bool:
    return not re.search(r"^make (run|test)\b", block, re.M)


@pytest.fixture(scope="module")
def server(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[DaphneServer]:
    with serve_daphne(
        django_db_blocker, tmp_path_factory, "daphne-readme", SPEECH_PROVIDERS="offline", SARVAM_API_KEY=""
    ) as daphne:
        yield daphne


def run(block: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_readmes_commands_work_as_written(server: DaphneServer, django_db_blocker: Any, tmp_path: Path) -> None:
    blocks = [block for block in shell_blocks(README.read_text()) if runnable(block)]
    creating, creating_a_session, talking = blocks  # the README's three runnable blocks, in order
    env = {
        **os.environ,
        "DATABASE_URL": child_database_url(django_db_blocker),
        "SPEECH_PROVIDERS": "offline",
        "CALLMISSED_WS_URL": server.url(),
    }

    made = run(creating, env)
    assert made.returncode == 0, made.stderr
    keys = KEY.findall(made.stdout)
    assert len(keys) == 1, made.stdout
    key = keys[0]
    assert made.stdout.strip().splitlines()[-1].isalnum()  # create_login's password, last

    created = run(
        creating_a_session.replace("cm_your_api_key", key).replace("http://127.0.0.1:8000", server.http_url), env
    )
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["status"] == "created" and body["config"]["llm_model"] == "kimi-k2.5", body

    answer = tmp_path / "agent.wav"
    talked = run(talking.replace("cm_your_api_key", key).replace("agent.wav", str(answer)), env)
    assert talked.returncode == 0, talked.stdout + talked.stderr
    lines = talked.stdout.splitlines()
    assert "(16000 Hz, offline)" in lines[0]
    heard = next(line.removeprefix("[you] ") for line in lines if line.startswith("[you] "))
    assert {"what", "open"} <= set(heard.split())  # the offline recogniser's ear is rough
    assert lines[-1].startswith("session ended: completed after ")
    assert answer.stat().st_size > 16000 * 2  # over a second of the agent's voice

    assert VoiceSession.objects.filter(organization__name="My Org").count() == 2


def test_a_bad_key_is_one_line_not_a_traceback(server: DaphneServer) -> None:
    result = subprocess.run(
        [*CLIENT, "--url", server.url(), "--key", "cm_not_a_real_key", "--say", "hello"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: invalid_api_key: Invalid API key."]
    assert "Traceback" not in result.stdout + result.stderr


def test_mic_without_an_audio_stack_is_refused_before_any_session(server: DaphneServer, tmp_path: Path) -> None:
    from accounts.tests.factories import make_key, make_org

    key = make_key(make_org(name="Mic Org")).plaintext  # a good key: only the check can stop the call
    # A host without PortAudio, whatever this one has: sounddevice fails to load exactly as it does there.
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    result = subprocess.run(
        [*CLIENT, "--url", server.url(), "--key", key, "--mic"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: --mic needs the sounddevice package and the PortAudio library")
    assert not VoiceSession.objects.filter(organization__name="Mic Org").exists()
