"""Faults in the live services: Redis stopped, frozen and restarted under REST traffic and under a
live legacy-socket call, and the Celery worker killed and restarted, or left running through a
broker restart.

Every test runs its own ``redis-server`` on a free port (the shared Redis is never touched) and
real child processes (Daphne, ``celery worker``) pointed at it. Conditions are awaited by bounded
polling; nothing asserts on time. "Nothing lost or doubled" is counted in PostgreSQL: transcript
lines, usage records, ledger rows and meter-event rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from django.db.models import Sum
from django.utils import timezone

from accounts.tests.factories import make_key, make_org
from agent_worker import contracts
from agent_worker.reporting import EventReporter
from billing.models import LedgerEntry, MeterEventReport, StripeWebhookEvent, UsageRecord
from billing.tests.support import KIMI_TURN, usage_event
from testsupport.fakes.livekit_server import FakeLiveKitServer
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam
from testsupport.fakes.stripe_api import FakeStripe, event_payload, signed_webhook
from testsupport.redis_server import RedisServer, redis_server_available
from voice import ws_control
from voice.models import ProcessedEvent, TranscriptSegment, VoiceSession
from voice.tests import celery_support
from voice.tests.celery_support import CeleryWorker, drain_behind, segment, send
from voice.tests.factories import VoiceSessionFactory
from voice.tests.ws_support import DaphneServer, WsCaller, child_database_url, in_thread, provider_env, serve_daphne

DATABASE_URL = os.environ.get("DATABASE_URL", "")

pytestmark = [
    pytest.mark.live_services,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("seeded_prices"),
    pytest.mark.skipif(
        not (DATABASE_URL.startswith("postgres") and redis_server_available()),
        reason="needs a PostgreSQL DATABASE_URL (child processes share the test database) and redis-server",
    ),
]

SARVAM_KEY = "sk-sarvam-fault-test"
CLARIFAI_PAT = "clarifai-pat-fault-test"
WEBHOOK_SECRET = "whsec_fault_test"
STRIPE_KEY = "sk_test_fault_test"
GREETING = "Namaste! Welcome to the Pune clinic."
WAIT_SECONDS = 45


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = WAIT_SECONDS) -> None:
    celery_support.wait_until(condition, what, timeout=timeout)


def assert_usage_counted_once(session_id: str, *, events: int) -> None:
    """Each usage event is its records once and debited once, in its own ledger post or its
    batch's (named by the batch's first new event); each record is one meter-event row."""
    records = UsageRecord.objects.filter(session_id=session_id)
    assert records.values("event_id").distinct().count() == events
    assert records.count() == records.values("event_id", "index").distinct().count()
    event_ids = set(records.values_list("event_id", flat=True))
    debits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE, reference__in=[f"usage:{e}" for e in event_ids])
    assert 1 <= debits.count() <= events
    assert MeterEventReport.objects.filter(usage_record__session_id=session_id).count() == records.count()
    cost = records.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    assert debits.aggregate(total=Sum("amount"))["total"] == -cost


# ------------------------------------------------------------------------------ a Daphne on its own Redis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: Any) -> Iterator[RedisServer]:
    # Not persistent: a restart comes back empty, as a replacement Redis does.
    with RedisServer(directory=tmp_path_factory.mktemp("redis-web")) as server:
        yield server


@pytest.fixture
def redis_up(own_redis: RedisServer) -> RedisServer:
    """Whatever the previous test did to it, this test starts with Redis running."""
    if own_redis.process is None:
        own_redis.start()
    own_redis.resume()
    return own_redis


@pytest.fixture(scope="module")
def sarvam() -> Iterator[FakeSarvam]:
    with FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=200) as fake:
        yield fake


@pytest.fixture(scope="module")
def chat() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key=CLARIFAI_PAT) as fake:
        yield fake


@pytest.fixture(scope="module")
def lk_server() -> Iterator[FakeLiveKitServer]:
    server = FakeLiveKitServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def daphne(
    django_db_setup: None,
    django_db_blocker: Any,
    own_redis: RedisServer,
    sarvam: FakeSarvam,
    chat: FakeChatServer,
    lk_server: FakeLiveKitServer,
    tmp_path_factory: Any,
) -> Iterator[DaphneServer]:
    with serve_daphne(
        django_db_blocker,
        tmp_path_factory,
        "daphne-faults",
        **provider_env(sarvam, chat, clarifai_pat=CLARIFAI_PAT),
        REDIS_URL=own_redis.url(0),
        CELERY_TASK_ALWAYS_EAGER="false",  # what the API queues goes to the broker
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        LIVEKIT_API_URL=lk_server.url,
        LEGACY_WS_USAGE_REPORT_SECONDS="1",
    ) as server:
        yield server


def rest_round(http: httpx.Client) -> list[tuple[str, httpx.Response]]:
    """One of everything the API serves: reads, a session created and deleted, a Stripe webhook."""
    done = [
        ("list sessions", http.get("/v1/voice/sessions")),
        ("catalog", http.get("/v1/catalog/voices")),
        ("limits", http.get("/v1/billing/limits")),
        ("usage", http.get("/v1/usage")),
    ]
    created = http.post("/v1/voice/sessions", json={"language": "hi-IN"})
    done.append(("create session", created))
    if created.status_code == 201:
        session_id = created.json()["id"]
        done.append(("read session", http.get(f"/v1/voice/sessions/{session_id}")))
        done.append(("delete session", http.delete(f"/v1/voice/sessions/{session_id}")))
    body, signature = signed_webhook(
        event_payload("invoice.paid", {"id": "in_fault", "object": "invoice"}), WEBHOOK_SECRET
    )
    done.append(
        (
            "stripe webhook",
            http.post(
                "/v1/billing/stripe/webhook",
                content=body,
                headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            ),
        )
    )
    return done


def assert_degraded_not_broken(round_: list[tuple[str, httpx.Response]]) -> None:
    """Every answer is a success or a 503 envelope with Retry-After; the failures are named together."""
    broken = []
    for name, response in round_:
        if response.status_code == 503:
            error = response.json()["error"]
            if error["code"] != "service_unavailable" or int(response.headers.get("Retry-After", 0)) < 1:
                broken.append((name, response.status_code, response.text[:200]))
        elif not 200 <= response.status_code < 300:
            broken.append((name, response.status_code, response.text[:200]))
    assert broken == [], [(name, status) for name, status, _ in broken]


def test_the_rest_api_answers_through_a_redis_outage_and_recovers_by_itself(
    daphne: DaphneServer, redis_up: RedisServer
) -> None:
    key = make_key(make_org(name="Outage Clinic")).plaintext
    broker = redis.Redis.from_url(redis_up.url(0))
    # A generous client timeout: a request that hangs on Redis fails the test instead of the run.
    with httpx.Client(base_url=daphne.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        before = rest_round(http)
        assert [r.status_code for _, r in before] == [200, 200, 200, 200, 201, 200, 204, 200]
        assert broker.llen("celery") >= 1  # the webhook's event (and the room deletion) went to the broker
        assert broker.keys("*api_key*")  # the rate limit counts in Redis

        redis_up.stop()  # gone: connections refused
        assert_degraded_not_broken(rest_round(http))

        redis_up.start()  # back, and empty: nothing in the API is restarted
        broker = redis.Redis.from_url(redis_up.url(0))

        def recovered() -> bool:
            assert_degraded_not_broken(rest_round(http))
            return bool(broker.keys("*api_key*")) and broker.llen("celery") > 0

        wait_until(recovered, "the rate limit and the broker to be used again")

        broker.flushdb()
        redis_up.pause()  # frozen: connections open, nothing answers; no request may hang on it
        assert_degraded_not_broken(rest_round(http))
        redis_up.resume()
        wait_until(recovered, "the rate limit and the broker to be used again after the freeze")

    # Every delivery was stored, whether or not the broker took its task; the hourly
    # reconciliation applies stored events that are still unprocessed.
    assert StripeWebhookEvent.objects.filter(processed_at__isnull=True).count() >= 3
    assert "Internal Server Error" not in daphne.log()


def test_stopping_a_socket_call_does_not_hang_on_a_frozen_redis(
    settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """REST DELETE and billing stop a socket call over the channel layer, whose reads wait without
    a timeout: with Redis frozen the request must still come back (the stop is logged)."""
    layer = settings.CHANNEL_LAYERS["default"]
    if "hosts" not in layer.get("CONFIG", {}):
        pytest.skip("needs the Redis channel layer (REDIS_URL)")
    with RedisServer(directory=tmp_path / "redis") as server:
        host = {**layer["CONFIG"]["hosts"][0], "address": server.url()}
        settings.CHANNEL_LAYERS = {"default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": [host]}}}
        session_id = str(uuid.uuid4())
        ws_control.websocket_session_terminate(session_id=session_id, reason=contracts.EndReason.DELETED)
        server.pause()
        returned = threading.Event()

        def stop() -> None:
            ws_control.websocket_session_terminate(session_id=session_id, reason=contracts.EndReason.DELETED)
            returned.set()

        threading.Thread(target=stop, daemon=True).start()
        assert returned.wait(WAIT_SECONDS), "the stop hung on the frozen Redis"
    assert f"Could not send session.terminate to WebSocket session {session_id}" in caplog.text


async def _speak_and_hear(caller: WsCaller, turn: int) -> None:
    """Say something; wait for the agent's answer (turn ``turn``, counting the greeting as 0)."""
    await caller.say(0.6)
    await caller.wait_for(
        lambda: len(caller.transcripts("agent")) > turn and len(caller.of("agent.stopped")) > turn, timeout=30
    )


def test_a_live_socket_call_goes_on_through_a_redis_restart_and_is_counted_once(
    daphne: DaphneServer, redis_up: RedisServer, sarvam: FakeSarvam, chat: FakeChatServer, make_client: Any
) -> None:
    api = make_client()
    chat.script_replies(GREETING, "We open at nine.", "Yes, on Sundays too.", "Dr. Rao is in today.")
    sarvam.script_transcripts("when do you open", "on sundays too", "who is in today")
    group_key = "asgi:group:voice-session.{}"

    async def call() -> tuple[WsCaller, str, float]:
        caller = await WsCaller.open(daphne.ws_url(api.plaintext))
        session_id = (await caller.configure(language="en-IN"))["session_id"]
        caller.start_streaming()
        await caller.wait_for(lambda: caller.transcripts("agent") != [] and caller.of("agent.stopped") != [])
        await _speak_and_hear(caller, 1)

        await asyncio.to_thread(redis_up.stop)
        heard_before = caller.audio_seconds()
        await _speak_and_hear(caller, 2)  # Redis is down: the call goes on
        assert caller.audio_seconds() > heard_before

        await asyncio.to_thread(redis_up.start)  # back, and empty
        rejoined = redis.Redis.from_url(redis_up.url(0))
        await asyncio.to_thread(
            wait_until, lambda: rejoined.exists(group_key.format(session_id)) == 1, "the call to rejoin its group"
        )
        await _speak_and_hear(caller, 3)

        finals = len(caller.transcripts("agent")) + len(caller.transcripts("user"))
        await in_thread(
            lambda: wait_until(
                lambda: TranscriptSegment.objects.filter(session_id=session_id).count() >= finals, "the transcript"
            )
        )
        stored = await in_thread(
            lambda: list(TranscriptSegment.objects.filter(session_id=session_id).values_list("role", "text"))
        )
        assert stored == [
            ("agent", GREETING),
            ("user", "when do you open"),
            ("agent", "We open at nine."),
            ("user", "on sundays too"),
            ("agent", "Yes, on Sundays too."),
            ("user", "who is in today"),
            ("agent", "Dr. Rao is in today."),
        ]
        # The control channel works again: REST DELETE reaches the call and ends it.
        async with httpx.AsyncClient(base_url=daphne.http_url, timeout=30) as http:
            deleted = await http.delete(
                f"/v1/voice/sessions/{session_id}", headers={"Authorization": f"Bearer {api.plaintext}"}
            )
        assert deleted.status_code == 204
        await caller.wait_closed()
        await caller.aclose()
        tts_total = next(u["quantity"] for u in caller.of("usage")[-1]["totals"] if u["component"] == "tts_characters")
        return caller, session_id, tts_total

    caller, session_id, tts_total = asyncio.run(call())
    ended = caller.first("session.ended")
    assert ended is not None and ended["reason"] == "deleted"
    row = VoiceSession.objects.get(pk=session_id)
    assert (row.status, row.end_reason) == ("ended", "deleted")
    # Usage: what the caller was told it used is what was billed, once.
    billed = UsageRecord.objects.filter(session_id=session_id, component="tts_characters").aggregate(q=Sum("quantity"))
    assert billed["q"] == Decimal(str(tts_total)) == Decimal(sarvam.tts_characters)
    events = UsageRecord.objects.filter(session_id=session_id).values("event_id").distinct().count()
    assert events >= 1
    assert_usage_counted_once(session_id, events=events)


# ------------------------------------------------------------------------------ the Celery worker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: Any) -> Iterator[RedisServer]:
    # Persistent, as a production broker: queued messages survive its restart.
    with RedisServer(directory=tmp_path_factory.mktemp("redis-broker"), persistent=True) as server:
        yield server


@pytest.fixture(scope="module")
def stripe_fake() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=STRIPE_KEY) as fake:
        yield fake


@pytest.fixture
def worker(
    django_db_blocker: Any, broker: RedisServer, stripe_fake: FakeStripe, tmp_path: Path
) -> Iterator[CeleryWorker]:
    """A worker the test starts, kills and restarts itself."""
    env = {
        "REDIS_URL": broker.url(0),
        # Usage goes on to Stripe as meter events, queued by the worker itself after each commit.
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": stripe_fake.api_base,
    }
    worker = CeleryWorker(
        database_url=child_database_url(django_db_blocker), log=tmp_path / "worker.log", name="fault-test", env=env
    )
    yield worker
    worker.stop()
    print(worker.log_tail())


@contextlib.contextmanager
def broker_app(broker: RedisServer) -> Iterator[Celery]:
    app = Celery("fault-test-beat", broker=broker.url(0), set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def drain(reporter: EventReporter, session_id: str) -> None:
    drain_behind(reporter, session_id, timeout=WAIT_SECONDS)


def test_events_survive_a_killed_worker_and_a_broker_restart_and_apply_once(
    worker: CeleryWorker, broker: RedisServer, stripe_fake: FakeStripe
) -> None:
    session = VoiceSessionFactory.create()
    sid = str(session.pk)
    reporter = EventReporter(broker_url=broker.url(0))  # as the agent worker builds it
    try:
        first = [segment(sid, 0, "pehla"), usage_event(session, *KIMI_TURN)]
        worker.start()
        send(reporter, contracts.SessionStarted(session_id=sid, providers="offline"), *first)
        drain(reporter, sid)

        # Killed mid-conversation, without a chance to clean up; the agent keeps reporting.
        worker.kill()
        second = [segment(sid, 1000, "doosra"), usage_event(session, *KIMI_TURN)]
        send(reporter, *second, *first)  # with the first events redelivered
        worker.start()
        drain(reporter, sid)
        assert TranscriptSegment.objects.filter(session=session).count() == 2

        # The broker restarts under the running worker; events reported meanwhile wait in the reporter.
        broker.stop()
        third = [segment(sid, 2000, "teesra"), usage_event(session, *KIMI_TURN)]
        ended = contracts.SessionEnded(session_id=sid, reason=contracts.EndReason.COMPLETED, duration_seconds=30.0)

        async def report_through_the_restart() -> bool:
            for event in (*third, *second, ended):
                reporter.report(event)
            await asyncio.to_thread(broker.start)
            return await reporter.flush(within=60)

        assert asyncio.run(report_through_the_restart())
        drain(reporter, sid)
    finally:
        asyncio.run(reporter.aclose())

    assert reporter.dropped == 0
    assert worker.process is not None and worker.process.poll() is None  # the same worker, still consuming
    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("ended", "completed")
    assert list(TranscriptSegment.objects.filter(session=session).values_list("text", flat=True)) == [
        "pehla",
        "doosra",
        "teesra",
    ]
    assert ProcessedEvent.objects.filter(session=session).count() == 2  # started, ended
    assert_usage_counted_once(sid, events=3)
    # Each record reached Stripe's meter exactly once. A meter task the killed worker held
    # unacknowledged comes back only after the broker's visibility timeout (an hour); meanwhile
    # the periodic flush resends reports pending for over two minutes (backdated here, as the
    # clock would). Reports whose tasks are merely still queued may be sent twice: that is a no-op.
    reports = MeterEventReport.objects.filter(usage_record__session_id=session.pk)
    reports.filter(status=MeterEventReport.Status.PENDING).update(created_at=timezone.now() - timedelta(minutes=10))
    with broker_app(broker) as app:
        app.send_task("billing.flush_meter_events")  # what beat sends every five minutes
    wait_until(lambda: not reports.exclude(status=MeterEventReport.Status.SENT).exists(), "the meter events to be sent")
    sent = sorted(e["identifier"] for e in stripe_fake.meter_events if e["identifier"].startswith("cm-usage-"))
    assert sent == sorted(reports.values_list("identifier", flat=True))
