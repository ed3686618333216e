"""Our pipeline next to Pipecat's on the same conversation: overhead and CPU per session, as ratios.

    .venv/bin/python -m bench.peers [--sessions 1,10,20] [--turns 5] [--rounds 2] [--spread 1.0]
        [--variants stock,adjusted]

The conversation, the fakes, the latencies they inject and the measures are
``bench.pipeline_overhead``'s: each session greets, then the caller says the same 0.4 s of tone
``--turns`` times on a 20 ms real-time clock, then talks over a long reply. Ours is
``pipeline_overhead.run`` unchanged; Pipecat's is ``pipecat_side.py`` run in a virtualenv of its
own (``bench/peers/.venv-pipecat``, made from ``requirements-pipecat.txt`` on first use), against
fakes started by ``pipeline_overhead.serve_fakes``. Every run is a fresh process with fresh fakes,
and the runs alternate — per round and level: ours, Pipecat stock, Pipecat adjusted, in an order
that reverses every round — so machine noise falls on both sides.

* overhead = first agent audio frame handed to the transport after the caller stops, minus the
  latencies the fakes injected; p50/p95 over every measured turn of every round;
* CPU per session = the CPU time of the process running the sessions (all its threads; the fakes
  are other processes) per wall second from the first measured turn to the last session's end,
  divided by the sessions; the mean over rounds;
* ratios are Pipecat's figure over ours (> 1: Pipecat adds more, or costs more).

``README.md`` beside this file lists what differs between the two measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import venv
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent_worker import catalog, contracts, heap
from agent_worker.providers import SARVAM_TTS_MODEL
from agent_worker.providers.sarvam_tts import _MIN_BUFFER_SIZE
from agent_worker.providers.sentences import SOFT_CHUNK_CHARS
from bench import pipeline_overhead as po

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-pipecat"
REQUIREMENTS = HERE / "requirements-pipecat.txt"
PIPECAT_SIDE = HERE / "pipecat_side.py"

OURS = "ours"
VARIANTS = ("stock", "adjusted")


@dataclass(frozen=True)
class Args:
    sessions: tuple[int, ...]
    turns: int
    rounds: int
    spread_s: float
    variants: tuple[str, ...]


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,10,20", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=5, help="measured turns per session")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs at each level, alternating")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which first turns are spread")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Pipecat turn-stop variants to run")
    ns = parser.parse_args(argv)
    sessions = tuple(int(x) for x in ns.sessions.split(",") if x.strip())
    variants = tuple(v.strip() for v in ns.variants.split(",") if v.strip())
    if not sessions or any(n < 1 for n in sessions):
        parser.error("--sessions needs positive integers")
    if ns.turns < 1 or ns.rounds < 1:
        parser.error("--turns and --rounds must be at least 1")
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        parser.error(f"--variants takes {', '.join(VARIANTS)}")
    return Args(sessions=sessions, turns=ns.turns, rounds=ns.rounds, spread_s=ns.spread, variants=variants)


def schedule(args: Args) -> list[tuple[int, int, str]]:
    """(round, sessions, side) in run order: at each level the sides alternate, and the order
    reverses every round, so neither side always runs first on a machine that is warming up."""
    sides = [OURS, *(f"pipecat-{v}" for v in args.variants)]
    order = []
    for round_ in range(args.rounds):
        for level in args.sessions:
            for side in sides if round_ % 2 == 0 else reversed(sides):
                order.append((round_, level, side))
    return order


@dataclass(frozen=True)
class Summary:
    side: str
    sessions: int
    turns: int
    overhead_p50: float
    overhead_p95: float
    cpu_per_session: float
    barge_in_stop_p95: float
    missed: int


def summarise(side: str, sessions: int, runs: list[po.Figures]) -> Summary:
    overhead = [x for f in runs for x in f.overhead]
    return Summary(
        side=side,
        sessions=sessions,
        turns=len(overhead),
        overhead_p50=po.pct(overhead, 0.5),
        overhead_p95=po.pct(overhead, 0.95),
        cpu_per_session=statistics.fmean(f.cpu_share for f in runs) / sessions,
        barge_in_stop_p95=po.pct([x for f in runs for x in f.barge_in_stop], 0.95),
        missed=sum(f.barge_ins_missed for f in runs),
    )


def ratio(peer: float, ours: float) -> float:
    """``peer / ours``; a side at or below zero (an overhead within the clock's noise) has no ratio."""
    return peer / ours if ours > 0 and peer >= 0 else float("nan")


TABLE_HEADER = (
    f"{'':>8} {'':<17} {'overhead ms':>15} {'CPU/session':>11} {'barge-in':>9} {'vs ours: overhead':>19} {'CPU':>6}",
    f"{'sessions':>8} {'side':<17} {'p50':>7} {'p95':>7} {'%core':>11} {'stop p95':>9} {'p50':>9} {'p95':>9} {'':>6}",
)


def table_row(s: Summary, ours: Summary) -> str:
    row = (
        f"{s.sessions:>8} {s.side:<17} {po.ms(s.overhead_p50):>7} {po.ms(s.overhead_p95):>7}"
        f" {s.cpu_per_session * 100:>11.2f} {po.ms(s.barge_in_stop_p95):>9}"
    )
    if s.side != OURS:
        row += (
            f" {ratio(s.overhead_p50, ours.overhead_p50):>8.1f}x {ratio(s.overhead_p95, ours.overhead_p95):>8.1f}x"
            f" {ratio(s.cpu_per_session, ours.cpu_per_session):>5.1f}x"
        )
    if s.missed:
        row += f"  ({s.missed} sessions did not stop when talked over)"
    return row


def plan(fakes: po.Fakes, sessions: int, turns: int, spread_s: float, turn_stop: str) -> dict[str, object]:
    """What ``pipecat_side.py`` needs to hold the same conversation as ``pipeline_overhead``."""
    config = contracts.SessionConfig()
    model = catalog.llm_model(config.llm_model)
    assert model is not None
    return {
        "sessions": sessions,
        "turns": turns,
        "spread_s": spread_s,
        "turn_stop": turn_stop,
        "sample_rate": po.SAMPLE_RATE,
        "chunk_s": po.CHUNK_S,
        "quiet_hex": po.QUIET.hex(),
        "speech_hex": [chunk.hex() for chunk in po.SPEECH],
        "barge_in_after_s": po.BARGE_IN_AFTER_S,
        "state_timeout_s": po.STATE_TIMEOUT_S,
        "system_prompt": "You are a benchmark.",
        "sarvam_http": fakes.sarvam_http,
        "sarvam_ws": fakes.sarvam_ws,
        "sarvam_key": po.SARVAM_KEY,
        "chat_base": fakes.chat_base,
        "chat_key": po.CLARIFAI_PAT,
        "llm_model": model.provider_model or model.id,
        "language": config.language,
        "voice": config.voice,
        "stt_model": "saaras:v3",
        "tts_model": SARVAM_TTS_MODEL,
        "tts_min_buffer_size": _MIN_BUFFER_SIZE,
        "tts_max_chunk_length": SOFT_CHUNK_CHARS,
        # 20 ms, the pieces ours hands its transport (agent_worker/audio_io.py FRAME_MS).
        "audio_out_10ms_chunks": 2,
    }


def ensure_venv() -> Path:
    """The Pipecat virtualenv's python, made and installed on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} from {REQUIREMENTS.name}", file=sys.stderr, flush=True)
        venv.create(VENV, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    return python


async def run_pipecat(python: Path, sessions: int, turns: int, spread_s: float, turn_stop: str) -> po.Figures:
    async with po.serve_fakes(turns) as fakes:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(PIPECAT_SIDE),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ""},
        )
        out, _ = await process.communicate(json.dumps(plan(fakes, sessions, turns, spread_s, turn_stop)).encode())
        if process.returncode:
            raise RuntimeError(f"pipecat_side.py ({turn_stop}, {sessions} sessions) exited {process.returncode}")
    assert fakes.sarvam_load is not None and fakes.chat_load is not None
    return pipecat_figures(json.loads(out), fakes.sarvam_load, fakes.chat_load)


def pipecat_figures(raw: dict[str, Any], sarvam_load: po.FakeLoad, chat_load: po.FakeLoad) -> po.Figures:
    """``pipecat_side.py``'s raw timings as ``pipeline_overhead``'s figures (no baseline: the
    comparison is with ours, run beside it)."""
    turns = [po.Turn(*t) for t in raw["turns"]]
    return po.Figures(
        overhead=[t.first_audio_at - t.speech_ended_at - po.INJECTED_S for t in turns],
        stt_leg=[t.transcript_at - t.speech_ended_at - po.STT_INJECTED_S for t in turns],
        reply_leg=[t.first_audio_at - t.transcript_at - po.REPLY_INJECTED_S for t in turns],
        baseline=[],
        barge_in_stop=list(raw["barge_in_stop"]),
        unplayed_at_barge_in=[],
        barge_ins_missed=int(raw["barge_ins_missed"]),
        loop_lag=list(raw["loop_lag"]),
        cpu_share=float(raw["cpu_share"]),
        sarvam_load=sarvam_load,
        chat_load=chat_load,
    )


def _ours_child(conn: Connection, sessions: int, turns: int, spread_s: float) -> None:
    logging.basicConfig(level=logging.ERROR)
    heap.settle_after_startup()  # as pipeline_overhead's main does, and the servers
    conn.send(asyncio.run(po.run(sessions, turns, spread_s)))


async def run_ours(sessions: int, turns: int, spread_s: float) -> po.Figures:
    """``pipeline_overhead.run`` in a fresh process, as Pipecat's side gets one."""
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    # Not a daemon: it starts the fakes' processes itself.
    process = spawn.Process(target=_ours_child, args=(child, sessions, turns, spread_s), name="bench-ours")
    process.start()
    try:
        figures: po.Figures = await asyncio.to_thread(parent.recv)
    finally:
        await asyncio.to_thread(process.join, 30)
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    python = ensure_venv()
    print(
        f"injected provider latency per turn: {po.INJECTED_S * 1000:.0f} ms; {args.turns} turns a session;"
        f" {args.rounds} rounds; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    runs: dict[tuple[str, int], list[po.Figures]] = {}
    for round_, level, side in schedule(args):
        if side == OURS:
            figures = asyncio.run(run_ours(level, args.turns, args.spread_s))
        else:
            figures = asyncio.run(run_pipecat(python, level, args.turns, args.spread_s, side.removeprefix("pipecat-")))
        runs.setdefault((side, level), []).append(figures)
        print(
            f"round {round_ + 1} {side:<17} {level:>3} sessions: overhead p50 {po.ms(po.pct(figures.overhead, 0.5))}"
            f" p95 {po.ms(po.pct(figures.overhead, 0.95))} ms, STT leg p50 {po.ms(po.pct(figures.stt_leg, 0.5))},"
            f" reply leg p50 {po.ms(po.pct(figures.reply_leg, 0.5))}, CPU {figures.cpu_share * 100:.0f}%,"
            f" loop lag p99 {po.ms(po.pct(figures.loop_lag, 0.99))} ms; Sarvam fake CPU, lag p99"
            f" {po.fake_load(figures.sarvam_load).strip()}; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    print()
    print(*TABLE_HEADER, sep="\n")
    for level in args.sessions:
        ours = summarise(OURS, level, runs[(OURS, level)])
        print(table_row(ours, ours))
        for variant in args.variants:
            side = f"pipecat-{variant}"
            print(table_row(summarise(side, level, runs[(side, level)]), ours))
