"""The agent worker runs without Django: importing any of its modules, or of outbound/ (the signing
and SSRF-guarded client it shares with webhooks), must not load it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import agent_worker

REPO_ROOT = Path(agent_worker.__file__).resolve().parent.parent

PROBE = """
import importlib, json, pkgutil, sys
import agent_worker, outbound
names = sorted(
    m.name
    for package in (agent_worker, outbound)
    for m in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
    if ".tests" not in m.name and m.name != "agent_worker.__main__"
)
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "django" or m.startswith("django."))
print(json.dumps({"modules": names, "django": loaded}))
"""


def test_no_agent_worker_module_imports_django() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The probe really imported the pipeline, not an empty list.
    assert {"agent_worker.conversation", "agent_worker.audio_io", "agent_worker.providers"} <= set(report["modules"])
    assert {"outbound.client", "outbound.signing", "outbound.ssrf"} <= set(report["modules"])
    assert report["django"] == []
