"""REST API throughput: session create, list and get against a bare JSON view, same server, same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cm_bench REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python -m bench.api_throughput [--servers daphne,daphne:2,uvicorn:2,hypercorn:2] \\
        [--levels 1,8,32,64] [--seconds 4]

For each server (``daphne`` is one Daphne process; ``daphne:N`` is production's start,
``python -m callmissed.serve`` with ``WEB_CONCURRENCY=N``; ``uvicorn:N`` is Uvicorn with N worker
processes; ``hypercorn:N`` Hypercorn with N workers, installed outside the venv as bench/README.md
says, ``--hypercorn-path``), the script starts it on ``bench.api_settings`` (the platform's settings with debug off
plus ``/bench/bare``, a JSON view that touches nothing), then runs a closed loop of C clients per
endpoint and level: each client sends its next request when the previous answer arrives, for the
given seconds after a one-second warm-up. Per cell it prints req/s, the ratio to the bare view at
the same level on the same server, p50/p99, the count of 5xx answers and of failed connections,
and the most PostgreSQL connections the database saw (``pg_stat_activity``, polled every 100 ms,
the bench's own excluded), and the server's CPU per answered request (all its processes, warm-up
included) with the bare view's CPU per request divided by it: on a shared machine the CPU figures
hold where req/s and latencies do not. Then an open loop at half the peak create rate: requests start on a
fixed schedule whatever the answers do, latency counted from the scheduled start (no coordinated
omission), p99 printed.

The organization's sessions are ended before each create run, so the admission count sees only
that run's sessions (as a deployment whose calls end sees its own). The one-minute load average
is printed at the start and the end: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psutil
import psycopg
from psycopg import sql

from testsupport.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ("bare", "create", "list", "get")


@dataclass
class Cell:
    server: str
    endpoint: str
    level: int
    latencies: list[float] = field(default_factory=list)
    server_errors: int = 0
    failures: int = 0
    other: int = 0
    seconds: float = 0.0
    max_connections: int = 0
    # The server's CPU (every process of it) over the whole cell, warm-up included, and the
    # requests it answered in that time: CPU per request is what a shared machine does not skew.
    server_cpu_seconds: float = 0.0
    answered: int = 0

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_seconds / self.answered * 1000 if self.answered else float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _create_database(database_url: str) -> None:
    """The bench's database, created (empty) when it does not exist yet; migrate fills it."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _setup(database_url: str) -> tuple[str, str]:
    """A fresh organization with a key, caps out of the way, and one session to read."""
    _create_database(database_url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.api_settings")
    os.environ["DATABASE_POOL_MAX_SIZE"] = "0"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from accounts import services as account_services
    from billing.models import BillingAccount

    org = account_services.organization_get_or_create(name=f"bench-{time.time_ns()}")
    key = account_services.api_key_create(organization=org, name="bench")
    BillingAccount.objects.filter(organization=org).update(max_concurrent_sessions=10**6, prepaid=False)
    return str(org.id), key.plaintext


def _end_sessions(database_url: str, org_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE voice_voicesession SET status = 'ended', end_reason = 'completed' "
            "WHERE organization_id = %s AND status IN ('created', 'active')",
            [org_id],
        )


class ConnectionWatch:
    """The most connections to the database at any 100 ms poll, the watcher's own excluded."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.name = urlsplit(database_url).path.lstrip("/")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.name],
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                time.sleep(0.1)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU of the server: its process and every worker process under it."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def serving(kind: str, port: int, env: dict[str, str], log: Path, hypercorn_path: str) -> Iterator[psutil.Process]:
    name, _, workers = kind.partition(":")
    env = {**env, "WEB_CONCURRENCY": workers or "1"}
    if kind == "daphne":
        argv = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    elif name == "daphne":  # production's start: WEB_CONCURRENCY Daphne processes behind the port
        argv = [sys.executable, "-m", "callmissed.serve", "--port", str(port)]
    elif name == "hypercorn":
        argv = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "--workers", workers or "1"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [hypercorn_path, env.get("PYTHONPATH")]))
    else:
        argv = [
            sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
            "--workers", workers or "1", "--no-access-log", "--log-level", "warning",
            "--loop", "uvloop", "--http", "httptools", "--lifespan", "off",
        ]  # fmt: skip
    argv.append("callmissed.asgi:application")
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/bare", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"{kind} exited; see {log}") from None
                time.sleep(0.2)
        yield psutil.Process(process.pid)
    finally:
        stop_process(process)


def _request(endpoint: str, base: str, session_id: str) -> tuple[str, str, bytes | None]:
    if endpoint == "bare":
        return "GET", f"{base}/bench/bare", None
    if endpoint == "create":
        return "POST", f"{base}/v1/voice/sessions", b"{}"
    if endpoint == "list":
        return "GET", f"{base}/v1/voice/sessions?limit=20", None
    return "GET", f"{base}/v1/voice/sessions/{session_id}", None


async def _one(
    http: aiohttp.ClientSession, method: str, url: str, body: bytes | None, cell: Cell, t0: float, total: Cell
) -> None:
    try:
        async with http.request(method, url, data=body) as response:
            await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError):
        cell.failures += 1
        return
    total.answered += 1
    if status >= 500:
        cell.server_errors += 1
    elif status >= 400:
        cell.other += 1
    else:
        cell.latencies.append(time.perf_counter() - t0)


def _client(key: str, level: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(level, 1)),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def closed_loop(cell: Cell, base: str, key: str, session_id: str, seconds: float) -> None:
    method, url, body = _request(cell.endpoint, base, session_id)
    async with _client(key, cell.level) as http:
        warm_until = time.perf_counter() + 1.0
        stop_at = warm_until + seconds
        counting = Cell(cell.server, cell.endpoint, cell.level)

        async def client() -> None:
            while (now := time.perf_counter()) < stop_at:
                await _one(http, method, url, body, counting if now >= warm_until else Cell("", "", 0), now, cell)

        await asyncio.gather(*(client() for _ in range(cell.level)))
        cell.latencies, cell.server_errors = counting.latencies, counting.server_errors
        cell.failures, cell.other, cell.seconds = counting.failures, counting.other, seconds


async def open_loop(cell: Cell, base: str, key: str, session_id: str, rate: float, seconds: float) -> None:
    method, url, body = _request(cell.endpoint, base, session_id)
    async with _client(key, 256) as http:
        start = time.perf_counter() + 0.2
        tasks = []
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(http, method, url, body, cell, scheduled, cell)))
        await asyncio.gather(*tasks)
        cell.seconds = seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", default="daphne,uvicorn:1,uvicorn:2")
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", type=Path, help="also write the cells here")
    parser.add_argument("--hypercorn-path", default="/tmp/hyper", help="where hypercorn was pip-installed (--target)")
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    server_env = dict(os.environ)  # before _setup turns pooling off for this process
    org_id, key = _setup(database_url)
    from voice.tests.factories import VoiceSessionFactory  # factory-boy: a dev dependency

    session_id = str(VoiceSessionFactory.create(organization_id=org_id, room_name=f"bench_{time.time_ns()}").id)
    levels = [int(n) for n in args.levels.split(",")]
    env = {
        **server_env,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "API_RATE_LIMIT": "100000000/min",
        "PROVIDER_MAX_LIVE_SESSIONS": "100000000",
        "LOG_LEVEL": "WARNING",
    }
    log = Path("/tmp") / f"api_throughput_{os.getpid()}.log"
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} load average {os.getloadavg()[0]:.2f}; server log {log}")
    cells: list[Cell] = []
    half_rate: list[Cell] = []
    port = 18700 + os.getpid() % 1000
    for server in args.servers.split(","):
        with serving(server, port, env, log, args.hypercorn_path) as process:
            base = f"http://127.0.0.1:{port}"
            for endpoint in ENDPOINTS:
                for level in levels:
                    if endpoint == "create":
                        _end_sessions(database_url, org_id)
                    cell = Cell(server, endpoint, level)
                    cpu_before = _cpu_seconds(process)
                    with ConnectionWatch(database_url) as watch:
                        asyncio.run(closed_loop(cell, base, key, session_id, args.seconds))
                    cell.server_cpu_seconds = _cpu_seconds(process) - cpu_before
                    cell.max_connections = watch.peak
                    cells.append(cell)
            peak = max(c.rate for c in cells if c.server == server and c.endpoint == "create")
            _end_sessions(database_url, org_id)
            half = Cell(server, "create (open loop, half peak)", 0)
            cpu_before = _cpu_seconds(process)
            asyncio.run(open_loop(half, base, key, session_id, peak / 2, args.seconds))
            half.server_cpu_seconds = _cpu_seconds(process) - cpu_before
            half.level = round(peak / 2)
            half_rate.append(half)
    _end_sessions(database_url, org_id)
    print(f"# done {time.strftime('%H:%M:%S')} load average {os.getloadavg()[0]:.2f}")
    print(
        "| server | endpoint | c | req/s | ratio to bare | p50 / p99 ms | 5xx | failed | max PG conns "
        "| server CPU ms/req | CPU ratio bare/this |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        bare = next(c for c in cells if c.server == cell.server and c.endpoint == "bare" and c.level == cell.level)
        ratio = cell.rate / bare.rate if bare.rate else float("nan")
        cpu_ratio = bare.cpu_ms_per_request / cell.cpu_ms_per_request if cell.server_cpu_seconds else float("nan")
        print(
            f"| {cell.server} | {cell.endpoint} | {cell.level} | {cell.rate:.0f} | {ratio:.2f} | "
            f"{cell.pct(50):.1f} / {cell.pct(99):.1f} | {cell.server_errors} | {cell.failures} | "
            f"{cell.max_connections} | {cell.cpu_ms_per_request:.2f} | {cpu_ratio:.2f} |"
        )
    for half in half_rate:
        print(
            f"| {half.server} | {half.endpoint} | rate {half.level}/s | {half.rate:.0f} | | "
            f"{half.pct(50):.1f} / {half.pct(99):.1f} | {half.server_errors} | {half.failures} | | "
            f"{half.cpu_ms_per_request:.2f} | |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "server": c.server,
                        "endpoint": c.endpoint,
                        "level": c.level,
                        "rate": c.rate,
                        "p50_ms": c.pct(50),
                        "p99_ms": c.pct(99),
                        "5xx": c.server_errors,
                        "failed": c.failures,
                        "max_connections": c.max_connections,
                        "server_cpu_ms_per_request": c.cpu_ms_per_request,
                    }
                    for c in [*cells, *half_rate]
                ],
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
