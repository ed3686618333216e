"""Every setting the code reads from the environment is documented in .env.example.

The settings are the fields of the typed definitions (callmissed/config.py, agent_worker/settings.py,
agent_worker/provider_settings.py); anything else that reads the environment directly is found in
the source.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from agent_worker.provider_settings import ProviderSettings
from agent_worker.settings import WorkerSettings
from callmissed.config import PlatformSettings

ROOT = Path(__file__).resolve().parent.parent
# Tests, fakes, benchmarks and the command-line client read their own knobs, not the deployment's.
SKIPPED = {".venv", "tests", "testsupport", "bench", "clients", "node_modules"}
# Process plumbing, not settings.
NOT_SETTINGS = {"DJANGO_SETTINGS_MODULE"}
_DIRECT_READ = re.compile(r"""(?:environ\.get|getenv)\(\s*"([A-Z][A-Z0-9_]+)"|environ\[\s*"([A-Z][A-Z0-9_]+)"\s*\]""")


def _fields(definition: type[BaseSettings]) -> set[str]:
    return {
        name.upper()
        for name, field in definition.model_fields.items()
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings))
    }


def _read_by_code() -> set[str]:
    names = _fields(PlatformSettings) | _fields(WorkerSettings) | _fields(ProviderSettings)
    for path in ROOT.rglob("*.py"):
        if SKIPPED & set(path.relative_to(ROOT).parts):
            continue
        for match in _DIRECT_READ.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names - NOT_SETTINGS


def _documented() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))


def test_every_setting_the_code_reads_is_in_env_example() -> None:
    read = _read_by_code()
    assert {"DATABASE_URL", "DRAIN_WAIT_SECONDS", "SPEECH_PROVIDERS", "AGENT_METRICS_PORT"} <= read
    missing = read - _documented()
    assert not missing, f"read by the code but not in .env.example: {sorted(missing)}"


def test_env_example_documents_nothing_the_code_ignores() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    stale = {name for name in _documented() - _read_by_code() if f"${{{name}" not in compose}
    assert not stale, f"in .env.example but read by nothing: {sorted(stale)}"


def test_every_variable_the_compose_file_substitutes_is_documented() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    substituted = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", compose))
    assert substituted - _documented() == set()
