"""Apps depend one way (webhooks -> voice -> billing -> accounts), and each audited action has one writer."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.models import AuditLog

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: an app may import the apps before it, never one after it.
LAYERS = ["accounts", "billing", "voice", "webhooks", "dashboard"]


def _modules(app: str) -> Iterator[Path]:
    for path in sorted((ROOT / app).rglob("*.py")):
        if "tests" not in path.relative_to(ROOT / app).parts:
            yield path


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import statement names, wherever it sits (a lazy import inside a function
    is still a dependency)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("app", LAYERS[:-1])
def test_an_app_never_imports_the_apps_that_depend_on_it(app: str) -> None:
    above = set(LAYERS[LAYERS.index(app) + 1 :])
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(app)
        for line, name in _imported(path)
        if name.split(".")[0] in above
    ]
    assert wrong == []


def _writers(action: str) -> list[str]:
    """The functions (module:function) whose code names ``AuditLog.Action.<action>``."""
    found = []
    for app in LAYERS:
        for path in _modules(app):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef):
                    continue
                for node in ast.walk(function):
                    if (
                        isinstance(node, ast.Attribute)
                        and node.attr == action
                        and isinstance(node.value, ast.Attribute)
                        and node.value.attr == "Action"
                    ):
                        found.append(f"{path.relative_to(ROOT)}:{function.name}")
                        break
    return found


@pytest.mark.parametrize("action", [a.name for a in AuditLog.Action])
def test_every_audited_action_is_written_by_exactly_one_service(action: str) -> None:
    [writer] = _writers(action)
    assert writer.split(":")[0].endswith("services.py")
