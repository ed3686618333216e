"""docker-compose.yml: every command it runs exists here, every service is health-checked, start
order waits for the migrations, and a stop is bounded by the drain instead of the longest call."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

from agent_worker import probe

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Services that run our image; the others run their own image's binaries (redis-server, pg_isready).
OURS = [name for name, service in SERVICES.items() if "build" in service]
WAIT_FOR_MIGRATE = ("web", "celery", "beat", "agent")
_CELERY_COMMANDS = {"worker", "beat", "inspect"}


def _argv_lists(service: dict[str, Any]) -> list[list[str]]:
    """The service's command and healthcheck, each as argv (a shell string is split)."""
    found: list[list[str]] = []
    command = service.get("command")
    if command:
        found.append(list(command) if isinstance(command, list) else shlex.split(command))
    test = service.get("healthcheck", {}).get("test")
    if test:
        if test[0] == "CMD":
            found.append(list(test[1:]))
        elif test[0] == "CMD-SHELL":
            found.append(shlex.split(test[1]))
    return found


def _module_runs(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    if spec.submodule_search_locations:  # a package runs through its __main__
        return importlib.util.find_spec(f"{name}.__main__") is not None
    return True


def _problem(argv: list[str]) -> str | None:
    program, args = argv[0], argv[1:]
    if program == "python" and args[:1] == ["manage.py"]:
        return None if args[1] in get_commands() else f"no manage.py command {args[1]!r}"
    if program == "python" and args[:1] == ["-m"]:
        return None if _module_runs(args[1]) else f"no runnable module {args[1]!r}"
    if program == "celery":
        app = args[args.index("-A") + 1]
        sub = next((a for a in args[args.index("-A") + 2 :] if not a.startswith("-")), "")
        if importlib.util.find_spec(app) is None:
            return f"no Celery app {app!r}"
        return None if sub in _CELERY_COMMANDS else f"unexpected celery command {sub!r}"
    if program == "make":
        targets = re.findall(r"^([A-Za-z0-9_-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
        missing = [t for t in args if not t.startswith("-") and t not in targets]
        return f"no make target {missing}" if missing else None
    return f"unknown program {program!r}"


def test_every_command_the_compose_file_runs_exists_in_the_project() -> None:
    checked = 0
    for name in OURS:
        for argv in _argv_lists(SERVICES[name]):
            problem = _problem(argv)
            assert problem is None, f"{name}: {problem} in {argv}"
            checked += 1
    assert checked >= 8  # the commands of migrate, web, celery, beat, agent and four probes


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in SERVICES.items():
        if name == "migrate":
            continue  # one-shot: it exits
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_web_celery_beat_and_the_agent_wait_for_the_migrations() -> None:
    assert SERVICES["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert SERVICES["migrate"]["restart"] == "no"
    for name in WAIT_FOR_MIGRATE:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert "migrate" not in " ".join(SERVICES[name]["command"]), f"{name} migrates by itself"


def test_livekit_server_is_a_pinned_release() -> None:
    image = SERVICES["livekit"]["image"]
    assert re.fullmatch(r"livekit/livekit-server:v\d+\.\d+\.\d+", image), image


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, value
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


@pytest.mark.parametrize("name", ["web", "agent"])
def test_a_stop_waits_for_the_drain_and_the_goodbye_not_for_the_longest_call(name: str) -> None:
    from agent_worker.worker import WorkerSettings

    drain_wait = int(re.search(r"\d+", SERVICES[name]["environment"]["DRAIN_WAIT_SECONDS"]).group())  # type: ignore[union-attr]
    goodbye_and_report = WorkerSettings.model_fields["agent_goodbye_lead_seconds"].default + 10
    grace = _seconds(SERVICES[name]["stop_grace_period"])
    assert drain_wait + goodbye_and_report <= grace < 3600


def test_web_runs_several_server_processes_whose_metrics_add_up() -> None:
    web = SERVICES["web"]
    assert web["command"][:3] == ["python", "-m", "callmissed.serve"]
    assert int(re.search(r"\d+", web["environment"]["WEB_CONCURRENCY"]).group()) > 1  # type: ignore[union-attr]
    # Without one shared directory a scrape would see only the process that answered it.
    assert web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert web["environment"]["REDIS_URL"]
    # The image starts the same server when run on its own.
    cmd = re.search(r"^CMD (.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None and json.loads(cmd.group(1))[:3] == web["command"][:3]


def test_the_probe_answers_for_a_url_and_a_fresh_file(tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    assert not probe.recently_changed(str(schedule), 300)
    (tmp_path / "celerybeat-schedule.db").write_bytes(b"x")
    mtime = (tmp_path / "celerybeat-schedule.db").stat().st_mtime
    assert probe.recently_changed(str(schedule), 300, now=mtime + 299)
    assert not probe.recently_changed(str(schedule), 300, now=mtime + 301)
    assert not probe.http_ok("http://127.0.0.1:9/", timeout=1)  # nothing listens on discard
    with pytest.raises(ValueError):
        probe.http_ok("file:///etc/passwd")


def _deploy_variables() -> list[str]:
    """The variables README's Deploy step 1 tells an operator to set in .env."""
    readme = (ROOT / "README.md").read_text()
    step = readme[readme.index("## Deploy") :].split("\n2. ", 1)[0]
    return sorted(set(re.findall(r"`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", step)) - {"LIVEKIT_URL", "SPEECH_PROVIDERS"})


def test_what_the_deploy_steps_put_in_env_reaches_the_containers() -> None:
    """Compose reads .env only for ${...} substitution: a value written there but not named in a
    service's environment never reaches the process, and production would run on dev defaults."""
    names = _deploy_variables()
    assert {"DJANGO_ENV", "DJANGO_SECRET_KEY", "TOOL_SIGNING_KEY", "LIVEKIT_API_SECRET"} <= set(names)
    web = SERVICES["web"]["environment"]
    for name in set(names) - {"LIVEKIT_PUBLIC_URL", "LIVEKIT_AGENT_URL"}:  # web's LIVEKIT_URL; the agent's
        assert "${" + name in str(web.get(name, "")), f"web never sees {name}"
    assert "${LIVEKIT_PUBLIC_URL" in web["LIVEKIT_URL"]
    agent = SERVICES["agent"]["environment"]
    assert "${LIVEKIT_AGENT_URL" in agent["LIVEKIT_URL"]  # your own LiveKit, not only the bundled one
    for shared in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "TOOL_SIGNING_KEY"):
        # Sealed dispatches and signed tool calls need the same value on both sides.
        assert agent[shared] == web[shared], shared
