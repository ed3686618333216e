"""Every setting the code reads from the environment is documented in .env.example."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the platform and the worker read settings; tests, fakes, benchmarks and the command-line
# client read their own knobs, which are not the deployment's.
SKIPPED = {".venv", "tests", "testsupport", "bench", "clients", "node_modules"}
# Process plumbing, not settings.
NOT_SETTINGS = {"DJANGO_SETTINGS_MODULE"}
_READ = re.compile(
    r"""(?:env_str|env_int|env_bool|env_list|_env_float|environ\.get|env\.get|getenv)\(\s*"([A-Z][A-Z0-9_]+)"
    |environ\[\s*"([A-Z][A-Z0-9_]+)"\s*\]""",
    re.VERBOSE,
)


def _read_by_code() -> set[str]:
    names: set[str] = set()
    for path in ROOT.rglob("*.py"):
        if SKIPPED & set(path.relative_to(ROOT).parts):
            continue
        for match in _READ.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names - NOT_SETTINGS


def _documented() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def test_every_setting_the_code_reads_is_in_env_example() -> None:
    read = _read_by_code()
    assert {"DATABASE_URL", "DRAIN_WAIT_SECONDS", "LEGACY_WS_MAX_AHEAD_SECONDS", "AGENT_METRICS_PORT"} <= read
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
