"""How many concurrent legacy-WebSocket sessions a server holds in real time, per server and process count.

    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python -m bench.ws_sessions \
        [--servers daphne:1,daphne:2,uvicorn:2,hypercorn:2] [--levels 25,50] [--seconds 30] [--rate 4] \
        [--client-procs 2] [--loops lean,stock] [--offline-levels 2,4,8] [--hypercorn-path /tmp/hyper]

Each ``--servers`` entry is ``server:processes``, one after the other in the same run:

* ``daphne:N`` — production's own start, ``python -m callmissed.serve`` with ``WEB_CONCURRENCY=N``
  (one Daphne process, or N children on the port, a ``SO_REUSEPORT`` socket each);
* ``uvicorn:N`` — ``uvicorn --workers N`` (its process manager; uvloop, httptools, websockets);
* ``hypercorn:N`` — ``hypercorn --workers N``. Hypercorn is no project dependency: install it
  outside the venv (``.venv/bin/pip install --target /tmp/hyper hypercorn``), the bench puts
  ``--hypercorn-path`` on the server's ``PYTHONPATH``.

Every server serves ``bench.ws_echo:application`` (CallMissed's app plus the two baselines below);
nothing else runs in it. The provider fakes (Sarvam STT/TTS and the chat completions, on loopback)
run in their own process, and the callers in ``--client-procs`` other processes, so the server's
figures are its own cost. Each caller streams 20 ms PCM frames in real time: silence, and every
8 s a 0.8 s tone the fake's VAD hears as an utterance, so the agent greets and then answers again
and again (speaking about a third of the time, at a realistic 60 ms of audio per character).

Per level, N callers start at ``--rate`` per second, then all N stay live together for
``--seconds``, then hang up (``end``). Figures:

* agent audio frame lateness — each caller plays the agent's frames back to back from the first
  frame of a reply; a frame's lateness is how long after the end of the audio before it it
  arrived (0 while the server keeps ahead, which it does by up to 60 ms). A late frame is a gap
  the listener hears. p50 / p99 / max over every frame of every session, and "live p99" over the
  frames received while all N were live. "Real time" = live p99 under 40 ms with every session
  greeted, answered and ended normally;
* server RSS growth per session: (RSS with all sessions live − RSS before the level) / N;
* server CPU (share of one core) while all sessions were live, and the callers' processes' CPU,
  which says whether the machine, not the server, was the limit. The server's RSS and CPU are
  the sum over all its processes (a supervisor, its workers, the offline STT decoders);
* spread: how many of the live connections each server process held.

``--offline-levels`` repeats the run with the embedded offline providers (pocketsphinx, piper,
the scripted LLM) in the server — their models run on the server's CPU, so the figure is far
lower and is reported separately. There the callers say a sentence in piper's voice (a tone is
no word to pocketsphinx) and take turns: each speaks a second after the agent stops. The
database must be PostgreSQL (the sessions write their rows concurrently); a new organization and
key are created for each run.

Baselines: the machine is shared, so absolute figures drift from run to run. Every level runs, on
the same server processes and in this order, the same callers at the same N against

* ``echo`` — a paced echo (``bench.ws_echo``): the server, WebSocket framing and real-time
  pacing, no session. The summary divides the voice agent's CPU per session by the echo's;
* ``lean`` — the legacy consumer as production runs it (``/ws/voice-agent``);
* ``stock`` — the same consumer on Channels' stock ``AsyncConsumer.__call__`` loop, served only by
  ``bench.ws_echo``: whether the consumer's own loop pays (``--loops lean`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from testsupport.processes import free_port, wait_for_listener

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
CHUNK_S = 0.02
UTTERANCE_EVERY_S = 8.0
UTTERANCE_S = 0.8
FIRST_UTTERANCE_AT_S = 5.0
TURN_PAUSE_S = 1.0
# What the offline callers say, in piper's voice: pocketsphinx hears words, not a tone.
CALLER_SAYS = "Please book an appointment for tomorrow morning."
LATENESS_LIMIT_MS = 40.0
SARVAM_KEY = "bench-sarvam"
CLARIFAI_PAT = "bench-clarifai"
TTS_MS_PER_CHAR = 60.0
ECHO_PATH = "/bench/echo"  # bench.ws_echo's baseline, beside the voice agent in the same server
STOCK_LOOP_PATH = "/bench/voice-agent-stock-loop"  # bench.ws_echo: the consumer on Channels' own loop
MAX_MESSAGE_BYTES = 1024 * 1024  # the legacy protocol's limit, as callmissed.serve gives Daphne
REPLY = "Sure. We are open from nine in the morning to six in the evening, every day."


# ------------------------------------------------------------------------------ fakes (own process)


@dataclass(frozen=True)
class FakeUrls:
    sarvam_http: str
    sarvam_ws: str
    chat_base: str


def serve_fakes(conn: Connection) -> None:
    from testsupport.fakes.openai_chat import FakeChatServer
    from testsupport.fakes.sarvam import FakeSarvam

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    # Sarvam's documented end of speech (the fake's default), so each turn lasts as long as a real one.
    sarvam = FakeSarvam(api_key=SARVAM_KEY, tts_ms_per_char=TTS_MS_PER_CHAR)
    sarvam.default_transcript = "when do you open"
    chat = FakeChatServer(api_key=CLARIFAI_PAT, default_reply=REPLY)
    with sarvam, chat:
        conn.send(FakeUrls(sarvam.http_url, sarvam.ws_url, chat.base_url("/v2/ext/openai/v1")))
        cpu, wall = time.process_time(), time.monotonic()
        conn.recv()
        conn.send((len(sarvam.violations), (time.process_time() - cpu) / (time.monotonic() - wall)))


# ------------------------------------------------------------------------------ callers (other processes)


@dataclass
class SessionResult:
    lateness_ms: list[float] = field(default_factory=list)
    steady_lateness_ms: list[float] = field(default_factory=list)
    agent_replies: int = 0
    user_lines: int = 0
    reason: str = ""
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)
    setup_error: str = ""


@dataclass(frozen=True)
class Caller:
    """What every caller of a level says, and when: ``speech`` every ``UTTERANCE_EVERY_S``, or,
    taking turns, ``TURN_PAUSE_S`` after each reply of the agent's ends."""

    speech: bytes
    takes_turns: bool


async def one_session(
    url: str, caller: Caller, start_at: float, end_at: float, steady: tuple[float, float]
) -> SessionResult:
    """One caller from ``start_at`` to ``end_at`` (monotonic, shared by every process on the
    machine); lateness inside ``steady`` (all sessions live) is also kept apart."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from testsupport.fakes.sarvam import silence

    result = SessionResult()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    quiet = silence(CHUNK_S, SAMPLE_RATE)
    next_utterance = math.inf
    step = int(SAMPLE_RATE * CHUNK_S) * 2
    try:
        async with connect(url, max_size=None, open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "config", "sample_rate": SAMPLE_RATE, "max_duration_seconds": 600}))
            play_end: float | None = None  # when the agent audio received so far finishes playing

            async def receive() -> None:
                nonlocal play_end, next_utterance
                async for message in ws:
                    now = time.monotonic()
                    if isinstance(message, bytes):
                        duration = len(message) / 2 / SAMPLE_RATE
                        if play_end is not None:
                            late = max(0.0, now - play_end) * 1000
                            result.lateness_ms.append(late)
                            if steady[0] <= now <= steady[1]:
                                result.steady_lateness_ms.append(late)
                        play_end = max(play_end or now, now) + duration
                        continue
                    event = json.loads(message)
                    kind = event["type"]
                    if kind == "agent.stopped":
                        play_end = None  # the next frame starts a new reply
                        if caller.takes_turns:
                            next_utterance = now + TURN_PAUSE_S
                    elif kind == "transcript" and event["final"]:
                        if event["role"] == "agent":
                            result.agent_replies += 1
                        else:
                            result.user_lines += 1
                    elif kind == "error":
                        result.errors.append(event["code"])
                    elif kind == "session.ended":
                        result.reason = event["reason"]

            receiver = asyncio.create_task(receive())
            started = time.monotonic()
            next_at = started
            if not caller.takes_turns:
                next_utterance = started + FIRST_UTTERANCE_AT_S
            pending = b""
            while time.monotonic() < end_at and not receiver.done():
                now = time.monotonic()
                if not pending and now >= next_utterance and now < end_at - UTTERANCE_EVERY_S / 2:
                    pending = caller.speech
                    next_utterance += math.inf if caller.takes_turns else UTTERANCE_EVERY_S
                chunk, pending = (pending[:step], pending[step:]) if pending else (quiet, b"")
                try:
                    await ws.send(chunk)
                except ConnectionClosed:
                    break
                next_at += CHUNK_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if not receiver.done():
                await ws.send(json.dumps({"type": "end"}))
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                await asyncio.wait_for(receiver, timeout=60)
            result.close_code = ws.close_code
    except Exception as error:  # a refused or broken connection is a result, not a crash
        result.setup_error = f"{type(error).__name__}: {error}"
    return result


def run_callers(
    conn: Connection, url: str, caller: Caller, starts: list[float], end_at: float, steady: tuple[float, float]
) -> None:
    async def all_sessions() -> list[SessionResult]:
        return list(await asyncio.gather(*(one_session(url, caller, start, end_at, steady) for start in starts)))

    cpu = time.process_time()
    wall = time.monotonic()
    results = asyncio.run(all_sessions())
    conn.send(([r.__dict__ for r in results], (time.process_time() - cpu) / (time.monotonic() - wall)))


# ------------------------------------------------------------------------------ the server


def manage(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


class Server:
    """``kind:processes`` serving ``bench.ws_echo:application`` on a free port."""

    def __init__(self, spec: str, env: dict[str, str], log: Path, *, hypercorn_path: str) -> None:
        self.kind, _, procs = spec.partition(":")
        self.procs = int(procs or "1")
        self.port = free_port()
        self.env = {**env, "WEB_CONCURRENCY": str(self.procs)}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        app = "bench.ws_echo:application"
        port = str(self.port)
        if self.kind == "daphne":
            self.argv = [sys.executable, "-m", "callmissed.serve", "--port", port, app]
        elif self.kind == "uvicorn":
            self.argv = [
                sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", port,
                "--workers", str(self.procs), "--ws-max-size", str(MAX_MESSAGE_BYTES),
                "--lifespan", "off", "--no-access-log", "--log-level", "warning", app,
            ]  # fmt: skip
        elif self.kind == "hypercorn":
            self.argv = [
                sys.executable,
                "-m",
                "hypercorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(self.procs),
                app,
            ]
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [hypercorn_path, self.env.get("PYTHONPATH")]))
        else:
            raise SystemExit(f"unknown server {spec!r}: daphne, uvicorn or hypercorn")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.procs}"

    def __enter__(self) -> Server:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if not wait_for_listener(self.process, self.port):
            raise RuntimeError(f"{self.label} did not start; see {self.log}")
        time.sleep(5.0 if self.procs > 1 else 0.0)  # the other workers finish importing
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Level:
    server: str  # kind:processes
    kind: str  # "echo", "lean" (the voice agent as production runs it) or "stock" (Channels' loop)
    sessions: int
    lateness_p50: float
    lateness_p99: float  # every frame, ramp included
    lateness_max: float
    steady_p99: float  # frames while every session was live
    frames: int
    ok_sessions: int
    failures: dict[str, int]
    rss_per_session_mb: float
    server_cpu: float
    callers_cpu: float
    spread: str  # live connections per server process

    @property
    def baseline(self) -> bool:
        return self.kind == "echo"

    @property
    def real_time(self) -> bool:
        return self.steady_p99 < LATENESS_LIMIT_MS and self.ok_sessions == self.sessions

    @property
    def cpu_per_session(self) -> float:
        return self.server_cpu / self.sessions


def server_tree(root: psutil.Process) -> list[psutil.Process]:
    # Workers, and the offline STT's decoder processes: their cost is the server's too.
    return [root, *root.children(recursive=True)]


def tree_cpu(root: psutil.Process) -> dict[int, float]:
    seconds = {}
    for process in server_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for process in server_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def spread(root: psutil.Process, port: int) -> str:
    """Accepted connections per server process: how evenly the shared socket hands them out."""
    held = []
    for process in server_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            count = sum(
                1
                for c in process.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
            )
            if count:
                held.append(count)
    return "+".join(str(n) for n in sorted(held, reverse=True)) or "0"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_level(
    server: Server, kind: str, path: str, caller: Caller, sessions: int, *, steady_s: float, rate: float, procs: int
) -> Level:
    """Start ``sessions`` callers at ``rate`` per second, hold them all live for ``steady_s``."""
    assert server.process is not None
    baseline = kind == "echo"
    root = psutil.Process(server.process.pid)
    time.sleep(3.0)  # let the previous level's sessions finish closing
    rss_before = tree_rss(root)
    url = f"ws://127.0.0.1:{server.port}{path}"
    spawn = multiprocessing.get_context("spawn")
    t0 = time.monotonic() + 3.0  # the callers' processes start meanwhile
    ramp = sessions / rate
    starts = [t0 + i / rate for i in range(sessions)]
    steady = (t0 + ramp + 3.0, t0 + ramp + 3.0 + steady_s)  # 3 s: the last greetings
    end_at = steady[1] + 1.0
    pipes, workers = [], []
    procs = min(procs, sessions)  # a process with no callers would report its start-up as their CPU
    for p in range(procs):
        parent, child = spawn.Pipe()
        worker = spawn.Process(
            target=run_callers, args=(child, url, caller, starts[p::procs], end_at, steady), daemon=True
        )
        worker.start()
        pipes.append(parent)
        workers.append(worker)
    time.sleep(max(0.0, steady[0] - time.monotonic()))
    cpu_before, wall_before = tree_cpu(root), time.monotonic()
    samples = []
    held = ""
    while time.monotonic() < steady[1]:
        time.sleep(0.5)
        samples.append(tree_rss(root))
        if not held and time.monotonic() > (steady[0] + steady[1]) / 2:
            held = spread(root, server.port)
    cpu_after = tree_cpu(root)
    used = sum(seconds - cpu_before.get(pid, 0.0) for pid, seconds in cpu_after.items())
    server_cpu = used / (time.monotonic() - wall_before)
    results: list[dict[str, Any]] = []
    callers_cpu = 0.0
    for parent, worker in zip(pipes, workers, strict=True):
        batch, cpu = parent.recv()
        results.extend(batch)
        callers_cpu += cpu
        worker.join()
    lateness = [v for r in results for v in r["lateness_ms"]]
    failures: dict[str, int] = {}
    ok = 0
    for r in results:
        problem = r["setup_error"][:60]
        if not problem and r["reason"] != "completed":
            problem = f"ended {r['reason']}" if r["reason"] else f"no session.ended (close {r['close_code']})"
            problem += f" {sorted(set(r['errors']))}" if r["errors"] else ""
        if not problem and baseline and not r["lateness_ms"]:
            problem = "no echo"
        if not problem and not baseline and (r["agent_replies"] < 2 or r["user_lines"] < 1):
            problem = "no reply"
        if problem:
            failures[problem] = failures.get(problem, 0) + 1
        else:
            ok += 1
    rss_live = statistics.median(samples) if samples else rss_before
    return Level(
        server=server.label,
        kind=kind,
        sessions=sessions,
        lateness_p50=percentile(lateness, 0.50),
        lateness_p99=percentile(lateness, 0.99),
        lateness_max=max(lateness) if lateness else math.nan,
        steady_p99=percentile([v for r in results for v in r["steady_lateness_ms"]], 0.99),
        frames=len(lateness),
        ok_sessions=ok,
        failures=failures,
        rss_per_session_mb=(rss_live - rss_before) / sessions / 2**20,
        server_cpu=server_cpu,
        callers_cpu=callers_cpu,
        spread=held,
    )


def print_levels(title: str, levels: list[Level]) -> None:
    print(f"\n{title}")
    print(
        f"{'':>12} {'':>5} {'sessions':>8} {'ok':>5} {'frames':>7} {'late p50':>9} {'p99 ms':>7} {'max ms':>7} "
        f"{'live p99':>8} {'MB/sess':>8} {'srv CPU':>8} {'callers':>8}  real time"
    )
    for level in levels:
        print(
            f"{level.server:>12} {level.kind:>5} {level.sessions:>8} {level.ok_sessions:>5} {level.frames:>7} "
            f"{level.lateness_p50:>9.1f} {level.lateness_p99:>7.1f} {level.lateness_max:>7.0f} "
            f"{level.steady_p99:>8.1f} {level.rss_per_session_mb:>8.2f} "
            f"{level.server_cpu:>8.2f} {level.callers_cpu:>8.2f}  {'yes' if level.real_time else 'NO'}"
            f"  {level.spread}" + (f"  {level.failures}" if level.failures else "")
        )
    limit = f"p99 lateness with all live < {LATENESS_LIMIT_MS:g} ms"
    for server in dict.fromkeys(level.server for level in levels):
        held = [lv.sessions for lv in levels if lv.server == server and lv.kind == "lean" and lv.real_time]
        print(f"{server}: voice agent held in real time: {max(held) if held else 0} concurrent sessions ({limit})")


def ratio(real: float, base: float) -> str:
    # Lateness is often 0 on the echo: a ratio to nothing says nothing.
    return f"{real / base:.1f}x" if base > 0 else "-"


def print_comparison(levels: list[Level]) -> None:
    """Server x processes x level, each against its own echo: on a shared machine only ratios hold still.

    ``x echo`` is CPU per session over the echo's at the same N on the same processes; ``lean/stock``
    is the consumer's own loop over Channels' stock loop (below 1: the lean loop pays)."""
    echo: dict[tuple[str, int], Level] = {}  # the latest of each, in run order: a level may repeat
    loop: dict[tuple[str, int, str], Level] = {}
    print(
        f"\n{'server':>12} {'N':>4} {'kind':>5} {'ok':>7} {'live p99':>8} {'CPU/sess':>9} {'x echo':>7} "
        f"{'MB/sess':>8} {'lean/stock':>10}  spread"
    )
    for lv in levels:
        at = (lv.server, lv.sessions)
        if lv.baseline:
            echo[at] = lv
            loop = {k: v for k, v in loop.items() if k[:2] != at}
        else:
            loop[(*at, lv.kind)] = lv
        base = echo.get(at)
        lean, stock = loop.get((*at, "lean")), loop.get((*at, "stock"))
        x_echo = ratio(lv.cpu_per_session, base.cpu_per_session) if base and not lv.baseline else ""
        # On the second of the pair after the echo.
        lean_stock = ratio(lean.cpu_per_session, stock.cpu_per_session) if lean and stock else ""
        print(
            f"{lv.server:>12} {lv.sessions:>4} {lv.kind:>5} {f'{lv.ok_sessions}/{lv.sessions}':>7} "
            f"{lv.steady_p99:>8.1f} {lv.cpu_per_session:>9.4f} {x_echo:>7} {lv.rss_per_session_mb:>8.2f} "
            f"{lean_stock:>10}  {lv.spread}" + ("" if lv.real_time else "   *")
        )
    if not all(lv.real_time for lv in levels):
        print("* fell behind or failed: its CPU there is what it was given, not what it needed")


def caller_speech(mode: str) -> Caller:
    if mode == "fakes":
        from testsupport.fakes.sarvam import tone

        # The fake STT's VAD hears any loud frame; its transcript is fixed whatever is said.
        return Caller(tone(UTTERANCE_S, SAMPLE_RATE), takes_turns=False)
    from agent_worker.providers.offline.tts import VOICES

    # Real words, waiting for the agent to finish: the offline agent's replies run 7 s and more.
    return Caller(VOICES.synthesize(CALLER_SAYS, SAMPLE_RATE), takes_turns=True)


def bench(
    mode: str,
    servers: list[str],
    levels: list[int],
    loops: list[str],
    *,
    base_env: dict[str, str],
    steady_s: float,
    rate: float,
    procs: int,
    hypercorn_path: str,
) -> list[Level]:
    """On each server in turn, each level: the echo first, then the voice agent on each loop (repeat a
    level, ``--levels 50,50``, for an A/B whose order alternates)."""
    caller = caller_speech(mode)
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    fakes = spawn.Process(target=serve_fakes, args=(child,), daemon=True)
    fakes.start()
    urls: FakeUrls = parent.recv()
    env = {
        **base_env,
        "PROVIDER_MAX_LIVE_SESSIONS": "100000",
        "BILLING_MAX_CONCURRENT_SESSIONS": "100000",
        "BILLING_SIGNUP_CREDIT_USD": "1000000",
        "AGENT_IDLE_TIMEOUT_SECONDS": "600",
    }
    if mode == "fakes":
        env |= {
            "SPEECH_PROVIDERS": "real",
            "SARVAM_API_KEY": SARVAM_KEY,
            "SARVAM_BASE_URL": urls.sarvam_http,
            "SARVAM_WS_URL": urls.sarvam_ws,
            "CLARIFAI_PAT": CLARIFAI_PAT,
            "CLARIFAI_BASE_URL": urls.chat_base,
        }
    else:
        env |= {"SPEECH_PROVIDERS": "offline", "SARVAM_API_KEY": ""}
    key = manage("create_api_key", f"bench-ws-{uuid.uuid4().hex[:8]}", env=env).strip().splitlines()[-1]
    paths = {"echo": ECHO_PATH, "lean": f"/ws/voice-agent?key={key}", "stock": f"{STOCK_LOOP_PATH}?key={key}"}
    done: list[Level] = []
    logs = []
    for spec in servers:
        log = Path(f"/tmp/bench-ws-{mode}-{spec.replace(':', '-')}-{os.getpid()}.log")
        logs.append(str(log))
        with Server(spec, env, log, hypercorn_path=hypercorn_path) as server:
            for round_, sessions in enumerate(levels):
                # The loops alternate their order from level to level: neither always runs first.
                for kind in ("echo", *(loops if round_ % 2 == 0 else loops[::-1])):
                    done.append(
                        run_level(
                            server, kind, paths[kind], caller, sessions, steady_s=steady_s, rate=rate, procs=procs
                        )
                    )
                print_levels(f"[{mode}] so far", done)
    parent.send("stop")
    violations, fakes_cpu = parent.recv()
    fakes.join()
    print_levels(f"Legacy WebSocket sessions on the {mode}, each level after the paced echo's", done)
    print(f"server logs: {' '.join(logs)}")
    print(f"fakes' process CPU: {fakes_cpu:.2f} of a core on average; protocol violations: {violations}")
    print_comparison(done)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="daphne:1,daphne:2,uvicorn:2,hypercorn:2", help="kind:processes, ...")
    parser.add_argument("--levels", default="25,50", help="concurrent sessions per level, on the fakes")
    parser.add_argument("--loops", default="lean,stock", help="the consumer's loops to run after the echo")
    parser.add_argument("--hypercorn-path", default="/tmp/hyper", help="where hypercorn was pip-installed (--target)")
    parser.add_argument("--offline-levels", default="2,4,8", help="levels on the offline providers ('' to skip)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long every session is live at once")
    parser.add_argument("--rate", type=float, default=4.0, help="sessions started per second")
    parser.add_argument("--client-procs", type=int, default=2)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database: SQLite cannot take this many concurrent writers.")
    base_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "callmissed.settings", "DJANGO_DEBUG": "false"}
    base_env.setdefault("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
    manage("migrate", "--noinput", "-v0", env=base_env)
    print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    servers = [spec for spec in args.servers.split(",") if spec]
    loops = [loop for loop in args.loops.split(",") if loop]
    options: dict[str, Any] = {
        "base_env": base_env,
        "steady_s": args.seconds,
        "rate": args.rate,
        "procs": args.client_procs,
        "hypercorn_path": args.hypercorn_path,
    }
    levels = [int(n) for n in args.levels.split(",") if n]
    bench("fakes", servers, levels, loops, **options)
    offline = [int(n) for n in args.offline_levels.split(",") if n]
    if offline:
        bench("offline", servers, offline, loops, **options)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
