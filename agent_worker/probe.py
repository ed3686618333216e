"""Container health probes, with nothing but the standard library (the image has no curl).

    python -m agent_worker.probe http URL            # exit 0 when URL answers 2xx within 5 s
    python -m agent_worker.probe fresh PATH SECONDS  # exit 0 when a file PATH* changed recently

``docker-compose.yml`` uses ``http`` for the web process (``/readyz``) and the agent worker
(livekit-agents' health endpoint), and ``fresh`` for Celery beat, which has no endpoint but
rewrites its schedule file as it runs. Django-free, so every container of the image can run it.
"""

from __future__ import annotations

import glob
import os
import sys
import time
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 5.0


def http_ok(url: str, *, timeout: float = TIMEOUT_SECONDS) -> bool:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def recently_changed(path_prefix: str, max_age_seconds: float, *, now: float | None = None) -> bool:
    """Shelve adds a suffix of its own choosing (``.db``, ``.dat``), so any file with the prefix counts."""
    now = time.time() if now is None else now
    ages = [now - os.path.getmtime(p) for p in glob.glob(glob.escape(path_prefix) + "*")]
    return bool(ages) and min(ages) <= max_age_seconds


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    if len(argv) == 3 and argv[0] == "fresh":
        return 0 if recently_changed(argv[1], float(argv[2])) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
