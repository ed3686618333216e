"""Production settings refuse unsafe defaults and pass Django's deployment checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROD_ENV = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": "p" * 20 + "-strong-production-secret-key-0123456789abcdef",
    "DJANGO_ALLOWED_HOSTS": "api.callmissed.com",
    "LIVEKIT_API_KEY": "APIprod",
    "LIVEKIT_API_SECRET": "a-long-production-livekit-secret-value",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LIVEKIT_"))}
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


def test_production_refuses_livekit_dev_credentials() -> None:
    env = {k: v for k, v in PROD_ENV.items() if not k.startswith("LIVEKIT_")}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "LIVEKIT_API_KEY" in result.stderr


def test_bad_typed_env_value_fails_loudly() -> None:
    result = _manage("check", env={"DJANGO_DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr
