"""The production server under load: Uvicorn with two worker processes, each with a small
PostgreSQL pool, and 64 clients at once. Every request is answered without a 5xx, and the
database never sees more connections than the pools allow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testsupport.processes import free_port, stop_process, wait_for_listener
from voice.tests.ws_support import child_database_url

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
POOL_MAX_SIZE = 3
CLIENTS = 64
APP_NAME = "callmissed-pool-test"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith("postgres"),
        reason="the server subprocess must see the test database: needs a PostgreSQL DATABASE_URL",
    ),
]


def _request(url: str, key: str, method: str, body: bytes | None) -> int:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        errors.append(error.read().decode(errors="replace")[:300])
        return int(error.code)


errors: list[str] = []


def test_64_clients_get_no_5xx_and_the_database_no_more_connections_than_the_pools(
    make_client: Any, django_db_blocker: Any, tmp_path: Path
) -> None:
    client = make_client()
    database_url = child_database_url(django_db_blocker)
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "callmissed.settings_test",
        "DATABASE_URL": database_url,
        "DATABASE_POOL_MAX_SIZE": str(POOL_MAX_SIZE),
        # 64 clients queue for 6 connections: on a loaded CI host a request may wait long, and
        # this test is about how many connections there are, not how fast the host is.
        "DATABASE_POOL_TIMEOUT_SECONDS": "100",
        "PROVIDER_MAX_LIVE_SESSIONS": "100000",
        "PGAPPNAME": APP_NAME,  # libpq's: tells the servers' connections apart from the test's
    }
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "callmissed.asgi:application", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(WORKERS), "--no-access-log"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP_NAME]
                ).fetchone()
                peak = max(peak, int(row[0]) if row else 0)
                time.sleep(0.05)

    try:
        assert wait_for_listener(server, port), log.read_text(errors="replace")
        base = f"http://127.0.0.1:{port}/v1/voice/sessions"
        watcher = threading.Thread(target=watch)
        watcher.start()

        def one_client(i: int) -> list[int]:
            statuses = []
            for _ in range(3):
                statuses.append(_request(base, client.plaintext, "POST", json.dumps({}).encode()))
                statuses.append(_request(f"{base}?limit=20", client.plaintext, "GET", None))
            return statuses

        try:
            with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
                statuses = [status for batch in pool.map(one_client, range(CLIENTS)) for status in batch]
        finally:
            stop.set()
            watcher.join()
    finally:
        stop_process(server)
    assert statuses.count(201) == 3 * CLIENTS, (sorted(set(statuses)), errors[:3])
    assert statuses.count(200) == 3 * CLIENTS
    assert 0 < peak <= WORKERS * POOL_MAX_SIZE
