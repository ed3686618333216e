"""Worker events drained into PostgreSQL: events/s, lost and doubled, one event per task against
batches, same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cm_bench \\
        .venv/bin/python -m bench.event_ingest [--sessions 10] [--segments 400] [--usage 100] \\
        [--modes per-event,batched] [--pace 50] [--window 0.2]

A private Redis (``testsupport.redis_server``) is the broker and a Celery worker with two prefork
children (as docker-compose runs it) applies the events. For each mode the agent worker's own
``EventReporter`` reports, per session, the segments and usage events interleaved, and then 10 %
of them again (a redelivery); the clock runs from the first report until every event is in
PostgreSQL. ``per-event`` is the reporter with its batch window at 0 (one task per event, the
baseline), ``batched`` its default window or ``--window`` (``--modes batched`` runs that one
alone). By default each session's events are reported all at once, one session after another;
``--pace N`` reports every session at the same time, each at N events/s, as live conversations
do (a session emits ~50 a second at most), so a window holds a few events of each. Lost: events
never stored; doubled: usage records or ledger debits beyond one per event (segments are unique
by event id). Worker CPU: the user and system seconds the Celery worker (its main process and
its two children) spent during the mode until the queue is empty, per event reported,
republished ones included: the cost
that does not depend on what else runs on the machine (PostgreSQL's own share is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--segments", type=int, default=400, help="per session")
    parser.add_argument("--usage", type=int, default=100, help="per session")
    parser.add_argument(
        "--pace", type=float, default=0, help="events/s each session reports at, all sessions at once; 0: all at once"
    )
    parser.add_argument("--window", type=float, help="the batched mode's batch window, s (default: the reporter's)")
    parser.add_argument("--modes", default="per-event,batched", help="comma-separated: per-event, batched")
    args = parser.parse_args()
    windows = {"per-event": 0.0, "batched": args.window}  # None: the reporter's own default
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(windows):
        parser.error(f"--modes takes {', '.join(windows)}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callmissed.settings")
    server_env = dict(os.environ)
    os.environ["DATABASE_POOL_MAX_SIZE"] = "0"
    import django
    import psutil
    from redis import Redis

    django.setup()
    from django.core.management import call_command
    from django.db.models import Sum

    from agent_worker import contracts
    from agent_worker.reporting import EventReporter
    from billing.models import LedgerEntry, UsageRecord
    from testsupport.processes import stop_process
    from testsupport.redis_server import RedisServer
    from voice.models import TranscriptSegment
    from voice.tests.factories import VoiceSessionFactory

    call_command("migrate", verbosity=0)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} load average {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(directory=Path(tmp)) as redis:
        env = {
            **server_env,
            "REDIS_URL": redis.url(0),
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "LOG_LEVEL": "WARNING",
        }
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "callmissed", "worker", "--concurrency=2",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            while b" ready." not in log.read_bytes():
                if worker.poll() is not None:
                    raise RuntimeError(log.read_text(errors="replace")[-4000:])
                time.sleep(0.2)

            def worker_cpu_seconds() -> float:
                processes = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
                return sum(sum(p.cpu_times()[:2]) for p in processes)

            for mode in modes:
                window = windows[mode]
                sessions = [
                    VoiceSessionFactory.create(room_name=f"ingest-{time.time_ns()}-{i}") for i in range(args.sessions)
                ]
                events: list[contracts.WorkerEvent] = []
                for session in sessions:
                    sid = str(session.id)
                    per_session: list[contracts.WorkerEvent] = [
                        contracts.TranscriptSegment(
                            session_id=sid, role="user", text=f"line {i}", start_offset_ms=i * 1000,
                            end_offset_ms=i * 1000 + 800,
                        )
                        for i in range(args.segments)
                    ]  # fmt: skip
                    usage = [
                        contracts.UsageReported(
                            session_id=sid,
                            items=[
                                contracts.UsageItem(
                                    component="tts_characters", model="bulbul:v3", provider="sarvam", quantity=40
                                )
                            ],
                        )
                        for _ in range(args.usage)
                    ]
                    step = max(1, args.segments // max(1, args.usage))
                    for n, u in enumerate(usage):
                        per_session.insert(min(len(per_session), (n + 1) * (step + 1) - 1), u)
                    events += per_session
                random.seed(7)
                again = random.sample(events, len(events) // 10)
                ids = [str(s.id) for s in sessions]
                expected_segments = args.sessions * args.segments
                expected_usage = args.sessions * args.usage

                def stored(ids: list[str] = ids) -> tuple[int, int]:
                    return (
                        TranscriptSegment.objects.filter(session_id__in=ids).count(),
                        UsageRecord.objects.filter(session_id__in=ids).values("event_id").distinct().count(),
                    )

                async def report(
                    reporter: EventReporter, batch: list[contracts.WorkerEvent], ids: list[str] = ids
                ) -> None:
                    if args.pace <= 0:
                        for n, event in enumerate(batch):
                            reporter.report(event)
                            if n % 20 == 0:
                                await asyncio.sleep(0)  # a conversation's loop yields between events
                    else:
                        # Every session at once, each at its own pace, as conversations run.
                        async def one_session(sid: str) -> None:
                            loop = asyncio.get_running_loop()
                            due = loop.time()
                            for event in (e for e in batch if e.session_id == sid):
                                reporter.report(event)
                                due += 1 / args.pace
                                await asyncio.sleep(max(0.0, due - loop.time()))

                        await asyncio.gather(*(one_session(sid) for sid in ids))
                    await reporter.flush(within=300)

                reporter = (
                    EventReporter(broker_url=redis.url(0))
                    if window is None
                    else EventReporter(broker_url=redis.url(0), batch_window=window)
                )
                cpu_before = worker_cpu_seconds()
                started = time.perf_counter()
                asyncio.run(report(reporter, [*events, *again]))
                published = time.perf_counter() - started
                deadline = time.monotonic() + 600
                while stored() != (expected_segments, expected_usage) and time.monotonic() < deadline:
                    time.sleep(0.05)
                drained = time.perf_counter() - started
                # The republished events may still be queued: the worker's CPU counts until the queue
                # is empty and nothing is unacknowledged, so one mode's tail is not charged to the next.
                broker = Redis.from_url(redis.url(0))
                while (broker.llen("celery") or broker.hlen("unacked")) and time.monotonic() < deadline:
                    time.sleep(0.05)
                cpu = worker_cpu_seconds() - cpu_before
                load = os.getloadavg()[0]
                asyncio.run(reporter.aclose())
                time.sleep(1.0)  # anything late (a redelivery applied twice) lands too
                segments, usage_events = stored()
                records = UsageRecord.objects.filter(session_id__in=ids)
                cost = records.aggregate(t=Sum("cost"))["t"] or Decimal(0)
                event_ids = set(records.values_list("event_id", flat=True))
                debited = -(
                    LedgerEntry.objects.filter(reference__in=[f"usage:{e}" for e in event_ids]).aggregate(
                        t=Sum("amount")
                    )["t"]
                    or Decimal(0)
                )
                lost = (expected_segments - segments) + (expected_usage - usage_events)
                doubled = (records.count() - records.values("event_id", "index").distinct().count()) + (
                    0 if debited == cost else 1
                )
                total = expected_segments + expected_usage
                reported = total + len(again)
                rows.append(
                    (
                        mode,
                        total,
                        len(again),
                        published,
                        drained,
                        total / drained,
                        cpu * 1e6 / reported,
                        load,
                        lost,
                        doubled,
                    )
                )
        finally:
            stop_process(worker, timeout=30)
    print(f"# done {time.strftime('%H:%M:%S')} load average {os.getloadavg()[0]:.2f}")
    print(
        "| mode | events | republished | reported in s | drained in s | events/s | worker CPU µs/event "
        "| load average | lost | doubled |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, total, again_n, published, drained, rate, cpu_us, load, lost, doubled in rows:
        print(
            f"| {mode} | {total} | {again_n} | {published:.1f} | {drained:.1f} | {rate:.0f} | {cpu_us:.0f} "
            f"| {load:.2f} | {lost} | {doubled} |"
        )


if __name__ == "__main__":
    main()
