"""Production settings refuse unsafe defaults and pass Django's deployment checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from callmissed.config import usable_cpus, web_processes

ROOT = Path(__file__).resolve().parent.parent
PROD_ENV = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": "p" * 20 + "-strong-production-secret-key-0123456789abcdef",
    "DJANGO_ALLOWED_HOSTS": "api.callmissed.com",
    "LIVEKIT_API_KEY": "APIprod",
    "LIVEKIT_API_SECRET": "a-long-production-livekit-secret-value",
    "DATABASE_URL": "postgres://callmissed@db.internal:5432/callmissed",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "SARVAM_API_KEY": "sk_prod_sarvam_key",
    "TOOL_SIGNING_KEY": "a-long-production-tool-signing-key-0123456789",
}
# The test run's own database, broker and provider settings must not leak into the production env.
_FROM_TEST_ENV = ("DJANGO_", "LIVEKIT_", "TOOL", "DATABASE_URL", "REDIS_URL", "CELERY_", "SPEECH_PROVIDERS", "SARVAM_")


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_FROM_TEST_ENV)}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "callmissed.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy() -> None:
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PROD_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_the_default_secret_key() -> None:
    env = {k: v for k, v in PROD_ENV.items() if k != "DJANGO_SECRET_KEY"}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_refuses_debug() -> None:
    result = _manage("check", env={**PROD_ENV, "DJANGO_DEBUG": "true"})
    assert result.returncode != 0
    assert "DJANGO_DEBUG" in result.stderr


def test_production_refuses_the_default_tool_signing_key() -> None:
    result = _manage("check", env=_without("TOOL_SIGNING_KEY"))
    assert result.returncode != 0
    assert "TOOL_SIGNING_KEY" in result.stderr


def test_production_refuses_livekit_dev_credentials() -> None:
    env = {k: v for k, v in PROD_ENV.items() if not k.startswith("LIVEKIT_")}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "LIVEKIT_API_KEY" in result.stderr


@pytest.mark.parametrize("secret", ["secret", "short-but-not-the-dev-value"])
def test_production_refuses_a_weak_livekit_secret_beside_a_real_key(secret: str) -> None:
    """An .env that sets only the key would otherwise let anyone mint room tokens and open every
    sealed dispatch with the public dev secret."""
    result = _manage("check", env={**PROD_ENV, "LIVEKIT_API_SECRET": secret})
    assert result.returncode != 0
    assert "LIVEKIT_API_SECRET" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("DJANGO_DEBUG", "maybe", "must be a boolean"),
        # Read once at start-up: a bad limit stops the server, not every call that connects.
        ("LEGACY_WS_MAX_AHEAD_SECONDS", "two", "must be a number"),
        # "inf" would switch the too-fast check off without a word.
        ("LEGACY_WS_MAX_AHEAD_SECONDS", "inf", "must be a finite number"),
    ],
)
def test_bad_typed_env_value_fails_loudly(name: str, value: str, said: str) -> None:
    result = _manage("check", env={name: value})
    assert result.returncode != 0
    assert f"{name} {said}" in result.stderr


def _without(*names: str) -> dict[str, str]:
    return {k: v for k, v in PROD_ENV.items() if k not in names}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (_without("DATABASE_URL"), "DATABASE_URL"),
        ({**PROD_ENV, "DATABASE_URL": "sqlite:////srv/callmissed.sqlite3"}, "DATABASE_URL"),
        (_without("REDIS_URL"), "REDIS_URL"),
        ({**PROD_ENV, "CELERY_TASK_ALWAYS_EAGER": "true"}, "CELERY_TASK_ALWAYS_EAGER"),
        ({**PROD_ENV, "CELERY_BROKER_URL": "memory://"}, "CELERY_BROKER_URL"),
        (_without("SARVAM_API_KEY"), "SARVAM_API_KEY"),
    ],
    ids=["no-database-url", "sqlite", "no-redis-url", "eager-celery", "memory-broker", "silent-offline-speech"],
)
def test_production_refuses_to_start_on_development_parts(env: dict[str, str], named: str) -> None:
    result = _manage("check", env=env)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr


def test_more_than_one_server_process_is_refused_without_redis() -> None:
    # A REST DELETE served by one process could not reach a call held by another.
    result = _manage("check", env={"WEB_CONCURRENCY": "2"})
    assert result.returncode != 0, result.stdout
    assert "WEB_CONCURRENCY=2 needs REDIS_URL" in result.stderr


def test_unset_web_concurrency_is_one_process_in_development_and_one_per_cpu_in_production() -> None:
    assert web_processes(None, production=False) == 1
    assert web_processes(None, production=True) == usable_cpus()
    assert web_processes(3, production=True) == 3


def test_a_container_cpu_quota_bounds_the_default_process_count(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one process
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 8) * 100000} 100000\n")  # a quota above the host's CPUs
    assert usable_cpus(cpu_max) == affinity
    assert usable_cpus(tmp_path / "missing") == affinity  # cgroup v1 or no cgroup


def test_production_may_serve_the_offline_voices_when_asked_by_name() -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={**_without("SARVAM_API_KEY"), "SPEECH_PROVIDERS": "offline"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


_PLATFORM_CODE = ("accounts", "billing", "callmissed", "dashboard", "voice", "webhooks", "templates")
_SETTINGS_FILES = {ROOT / "callmissed" / "settings.py", ROOT / "callmissed" / "settings_test.py"}


def _platform_source() -> str:
    files = [
        path
        for top in _PLATFORM_CODE
        for path in (ROOT / top).rglob("*")
        if path.suffix in {".py", ".html"} and "tests" not in path.parts and path not in _SETTINGS_FILES
    ]
    return "\n".join(path.read_text() for path in files)


def test_every_setting_read_from_the_environment_is_used() -> None:
    """Each variable the platform defines reaches a Django setting, and each such setting is read by
    Django, by Celery (its CELERY_ namespace) or by our code: no value that nothing reads."""
    from django.conf import global_settings

    from callmissed.config import PlatformSettings

    settings_py = (ROOT / "callmissed" / "settings.py").read_text()
    unwired = [name for name in PlatformSettings.model_fields if f"_env.{name}" not in settings_py]
    assert unwired == []

    source = _platform_source()
    from_env = re.findall(r"^([A-Z][A-Z0-9_]*) = .*_env\.", settings_py, flags=re.MULTILINE)
    unread = [
        name
        for name in from_env
        if not hasattr(global_settings, name)
        and not name.startswith("CELERY_")
        and not re.search(rf"\b{name}\b", source)
    ]
    assert from_env and unread == []
