"""How many concurrent legacy-WebSocket sessions one Daphne process holds in real time.

    DATABASE_URL=postgres://… [REDIS_URL=redis://…] .venv/bin/python -m bench.ws_sessions \
        [--levels 25,50,100,150] [--seconds 30] [--rate 4] [--client-procs 2] [--offline-levels 2,4,8]

One ``daphne callmissed.asgi:application`` process serves every session; nothing else runs in
it. The provider fakes (Sarvam STT/TTS and the chat completions, on loopback) run in their own
process, and the callers in ``--client-procs`` other processes, so the server's figures are its
own cost. Each caller streams 20 ms PCM frames in real time: silence, and every 8 s a 0.8 s tone
the fake's VAD hears as an utterance, so the agent greets and then answers again and again
(speaking about a third of the time, at a realistic 60 ms of audio per character).

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
  Daphne's with its child processes' (the offline STT decoders).

``--offline-levels`` repeats the run with the embedded offline providers (pocketsphinx, piper,
the scripted LLM) in the server — their models run on the server's CPU, so the figure is far
lower and is reported separately. There the callers say a sentence in piper's voice (a tone is
no word to pocketsphinx) and take turns: each speaks a second after the agent stops. The
database must be PostgreSQL (the sessions write their rows concurrently); a new organization and
key are created for each run.

Baseline: the machine is shared, so absolute figures drift from run to run. Every level first
runs the same callers, at the same N, against a paced echo (``bench.ws_echo``) served by the same
Daphne process — Daphne, WebSocket framing and real-time pacing, no session — and the summary
gives the voice agent's server CPU per session and live p99 lateness as ratios to the echo's.
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
DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]
ECHO_PATH = "/bench/echo"  # bench.ws_echo's baseline, beside the voice agent in the same Daphne
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
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*DAPHNE, "-p", str(self.port), "bench.ws_echo:application"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not wait_for_listener(self.process, self.port):
            raise RuntimeError(f"Daphne did not start; see {self.log}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Level:
    baseline: bool  # the paced echo, not the voice agent
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

    @property
    def real_time(self) -> bool:
        return self.steady_p99 < LATENESS_LIMIT_MS and self.ok_sessions == self.sessions

    @property
    def cpu_per_session(self) -> float:
        return self.server_cpu / self.sessions


def server_tree(daphne: psutil.Process) -> list[psutil.Process]:
    # The offline STT decodes in child processes of Daphne's: their cost is the server's too.
    return [daphne, *daphne.children(recursive=True)]


def tree_cpu(daphne: psutil.Process) -> dict[int, float]:
    seconds = {}
    for process in server_tree(daphne):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def tree_rss(daphne: psutil.Process) -> int:
    total = 0
    for process in server_tree(daphne):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_level(
    server: Server, path: str, caller: Caller, sessions: int, *, steady_s: float, rate: float, procs: int
) -> Level:
    """Start ``sessions`` callers at ``rate`` per second, hold them all live for ``steady_s``."""
    assert server.process is not None
    baseline = path.startswith(ECHO_PATH)
    daphne = psutil.Process(server.process.pid)
    time.sleep(3.0)  # let the previous level's sessions finish closing
    rss_before = tree_rss(daphne)
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
    cpu_before, wall_before = tree_cpu(daphne), time.monotonic()
    samples = []
    while time.monotonic() < steady[1]:
        time.sleep(0.5)
        samples.append(tree_rss(daphne))
    cpu_after = tree_cpu(daphne)
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
        baseline=baseline,
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
    )


def print_levels(title: str, levels: list[Level]) -> None:
    print(f"\n{title}")
    print(
        f"{'':>4} {'sessions':>8} {'ok':>5} {'frames':>7} {'late p50':>9} {'p99 ms':>7} {'max ms':>7} "
        f"{'live p99':>8} {'MB/sess':>8} {'srv CPU':>8} {'callers':>8}  real time"
    )
    for level in levels:
        print(
            f"{'echo' if level.baseline else 'real':>4} {level.sessions:>8} {level.ok_sessions:>5} {level.frames:>7} "
            f"{level.lateness_p50:>9.1f} {level.lateness_p99:>7.1f} {level.lateness_max:>7.0f} "
            f"{level.steady_p99:>8.1f} {level.rss_per_session_mb:>8.2f} "
            f"{level.server_cpu:>8.2f} {level.callers_cpu:>8.2f}  {'yes' if level.real_time else 'NO'}"
            + (f"  {level.failures}" if level.failures else "")
        )
    held = [level.sessions for level in levels if level.real_time and not level.baseline]
    limit = f"p99 lateness with all live < {LATENESS_LIMIT_MS:g} ms"
    print(f"voice agent held in real time: {max(held) if held else 0} concurrent sessions ({limit})")


def ratio(real: float, base: float) -> str:
    # Lateness is often 0 on the echo: a ratio to nothing says nothing.
    return f"{real / base:.1f}x" if base > 0 else "-"


def print_comparison(pairs: list[tuple[Level, Level]]) -> None:
    """The voice agent against the echo at the same N: on a shared machine, only these hold still."""
    print(f"\n{'sessions':>8} {'CPU/sess echo':>14} {'real':>6} {'ratio':>6}", end="")
    print(f"   {'live p99 echo':>13} {'real':>6} {'ratio':>6}")
    for base, real in pairs:
        print(
            f"{real.sessions:>8} {base.cpu_per_session:>14.4f} {real.cpu_per_session:>6.3f} "
            f"{ratio(real.cpu_per_session, base.cpu_per_session):>6}   "
            f"{base.steady_p99:>13.1f} {real.steady_p99:>6.1f} {ratio(real.steady_p99, base.steady_p99):>6}"
            + ("" if real.real_time else "   *")
        )
    if not all(real.real_time for _, real in pairs):
        print("* the voice agent fell behind: its CPU there is what it was given, not what it needed")


def caller_speech(mode: str) -> Caller:
    if mode == "fakes":
        from testsupport.fakes.sarvam import tone

        # The fake STT's VAD hears any loud frame; its transcript is fixed whatever is said.
        return Caller(tone(UTTERANCE_S, SAMPLE_RATE), takes_turns=False)
    from agent_worker.providers.offline.tts import VOICES

    # Real words, waiting for the agent to finish: the offline agent's replies run 7 s and more.
    return Caller(VOICES.synthesize(CALLER_SAYS, SAMPLE_RATE), takes_turns=True)


def bench(
    mode: str, levels: list[int], *, base_env: dict[str, str], steady_s: float, rate: float, procs: int
) -> list[tuple[Level, Level]]:
    """Each level twice on one Daphne process: the echo first, then the voice agent."""
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
    log = Path(f"/tmp/bench-ws-{mode}-{os.getpid()}.log")
    pairs = []
    with Server(env, log) as server:
        for sessions in levels:
            base, real = (
                run_level(server, path, caller, sessions, steady_s=steady_s, rate=rate, procs=procs)
                for path in (ECHO_PATH, f"/ws/voice-agent?key={key}")
            )
            pairs.append((base, real))
            print_levels(f"[{mode}] so far", [level for pair in pairs for level in pair])
    parent.send("stop")
    violations, fakes_cpu = parent.recv()
    fakes.join()
    print_levels(
        f"Legacy WebSocket sessions on the {mode}, each level after the paced echo's (one Daphne process; "
        f"server log {log})",
        [level for pair in pairs for level in pair],
    )
    print(f"fakes' process CPU: {fakes_cpu:.2f} of a core on average; protocol violations: {violations}")
    print_comparison(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="25,50,100,150", help="concurrent sessions per level, on the fakes")
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
    levels = [int(n) for n in args.levels.split(",") if n]
    bench("fakes", levels, base_env=base_env, steady_s=args.seconds, rate=args.rate, procs=args.client_procs)
    offline = [int(n) for n in args.offline_levels.split(",") if n]
    if offline:
        bench("offline", offline, base_env=base_env, steady_s=args.seconds, rate=args.rate, procs=args.client_procs)


if __name__ == "__main__":
    main()
