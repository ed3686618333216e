"""A session's segments and usage arriving as batches: each event id takes effect once whatever
repeats, overlaps or arrives out of order, whichever worker applies it, and a batch is one
transaction of a fixed number of statements with one ledger post."""

from __future__ import annotations

import os
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_worker import contracts
from billing.models import BillingAccount, LedgerEntry, MeterEventReport, ModelPrice, UsageRecord
from billing.tests.support import KIMI_TURN, C, usage_event
from voice import lifecycle, tasks
from voice.models import TranscriptSegment, VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db


def _segment(session: VoiceSession, start: int, text: str) -> contracts.TranscriptSegment:
    return contracts.TranscriptSegment(
        session_id=str(session.id), role="user", text=text, start_offset_ms=start, end_offset_ms=start + 900
    )


def _send_batch(session: VoiceSession, *events: contracts.WorkerEvent) -> None:
    batch = contracts.EventBatch(
        segments=[e for e in events if isinstance(e, contracts.TranscriptSegment)],
        usage=[e for e in events if isinstance(e, contracts.UsageReported)],
    )
    tasks.event_batch.apply(kwargs={"payload": batch.model_dump(mode="json")}).get()


def _balance(session: VoiceSession) -> Decimal:
    return BillingAccount.objects.get(organization=session.organization).balance


def test_a_batch_with_repeats_redelivered_applies_each_event_once_in_one_ledger_post(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    one, two = _segment(session, 0, "Namaste"), _segment(session, 1000, "Kya haal hai?")
    first, second = usage_event(session, *KIMI_TURN), usage_event(session, *KIMI_TURN)
    before = _balance(session)

    _send_batch(session, one, first, two, one, second, first)  # repeats inside the batch
    after_one = _balance(session)
    _send_batch(session, one, first, two, one, second, first)  # and the whole batch redelivered

    assert TranscriptSegment.objects.filter(session=session).count() == 2
    assert UsageRecord.objects.filter(session_id=session.id).count() == 2 * len(KIMI_TURN)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE, account__organization=api.org).count() == 1
    charged = sum(r.cost for r in UsageRecord.objects.filter(session_id=session.id))
    assert charged > 0
    assert before - after_one == charged
    assert _balance(session) == after_one


def test_overlapping_batches_and_lone_events_in_any_order_count_each_event_once(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    segments = [_segment(session, 1000 * i, f"line {i}") for i in range(6)]
    usage = [usage_event(session, *KIMI_TURN) for _ in range(3)]
    before = _balance(session)

    # The later batch first, then one overlapping both, then lone events already applied.
    _send_batch(session, *segments[3:], usage[2])
    _send_batch(session, *segments[1:5], usage[1], usage[2])
    tasks.transcript_segment.apply(kwargs={"payload": segments[4].model_dump(mode="json")}).get()
    tasks.usage_reported.apply(kwargs={"payload": usage[1].model_dump(mode="json")}).get()
    _send_batch(session, segments[0], usage[0])

    stored = TranscriptSegment.objects.filter(session=session).order_by("start_offset_ms")
    assert [s.text for s in stored] == [f"line {i}" for i in range(6)]
    records = UsageRecord.objects.filter(session_id=session.id)
    assert records.count() == 3 * len(KIMI_TURN)
    assert before - _balance(session) == sum(r.cost for r in records)


def test_a_batch_for_a_deleted_session_bills_its_usage_but_stores_no_transcript(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    assert api.delete(f"/v1/voice/sessions/{session.id}").status_code == 204
    _send_batch(session, _segment(session, 0, "too late"), usage_event(session, *KIMI_TURN))
    assert not TranscriptSegment.objects.filter(session=session).exists()
    assert UsageRecord.objects.filter(session_id=session.id).count() == len(KIMI_TURN)


def test_a_batch_whose_usage_has_no_price_still_stores_its_transcript(api: Any) -> None:
    from billing.pricing import PriceMissing
    from voice import lifecycle

    session = VoiceSessionFactory.create(organization=api.org)
    ModelPrice.objects.filter(model="bulbul:v3").delete()  # the admin has not priced it (yet)
    batch = contracts.EventBatch(
        session_id=str(session.id),
        segments=[_segment(session, 0, "Namaste")],
        usage=[usage_event(session, (contracts.UsageComponent.TTS_CHARACTERS, "bulbul:v3", 10))],
    )
    with pytest.raises(PriceMissing):  # the task retries on it
        lifecycle.worker_events_apply(batch=batch)
    assert [s.text for s in TranscriptSegment.objects.filter(session=session)] == ["Namaste"]
    assert not UsageRecord.objects.filter(session_id=session.id).exists()


def test_a_tool_line_in_a_batch_keeps_its_call(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    record = contracts.ToolCallRecord(name="lookup", call_id="call_1", arguments="{}", result="{}", latency_ms=9.0)
    tool = contracts.TranscriptSegment(
        session_id=str(session.id), role="tool", text="lookup", start_offset_ms=0, end_offset_ms=5, tool_call=record
    )
    _send_batch(session, tool, _segment(session, 100, "It has shipped."))
    lines = api.get(f"/v1/voice/sessions/{session.id}/transcripts").json()["segments"]
    assert [line["tool_call"] for line in lines] == [record.model_dump(mode="json"), None]


def test_usage_before_the_sessions_start_bills_and_the_start_still_applies(api: Any) -> None:
    session = VoiceSessionFactory.create(organization=api.org)
    before = _balance(session)
    _send_batch(session, usage_event(session, *KIMI_TURN), _segment(session, 0, "pehle"))
    tasks.session_started.apply(
        kwargs={"payload": contracts.SessionStarted(session_id=str(session.id)).model_dump(mode="json")}
    ).get()

    session.refresh_from_db()
    assert session.status == VoiceSession.Status.ACTIVE
    assert before - _balance(session) == Decimal("0.0487184")
    assert TranscriptSegment.objects.filter(session=session).count() == 1


ON_POSTGRESQL = os.environ.get("DATABASE_URL", "").startswith("postgres")


@pytest.mark.parametrize(
    "size",
    [
        1,
        pytest.param(
            40, marks=pytest.mark.skipif(not ON_POSTGRESQL, reason="SQLite's parameter limit splits a long insert")
        ),
    ],
)
def test_a_batch_costs_the_same_statements_whatever_its_size(
    api: Any, django_assert_num_queries: Any, size: int
) -> None:
    """The session; the segments' insert; the prices and the rates they are in (one read each);
    the usage's insert; the balance; the ledger post; the meter events — plus the batch's own
    transaction, a savepoint inside a test."""
    session = VoiceSessionFactory.create(organization=api.org)
    events = [
        *(_segment(session, 1000 * i, f"line {i}") for i in range(size)),
        *(usage_event(session, *KIMI_TURN) for _ in range(size)),
    ]
    batch = contracts.EventBatch(
        session_id=str(session.id),
        segments=[e for e in events if isinstance(e, contracts.TranscriptSegment)],
        usage=[e for e in events if isinstance(e, contracts.UsageReported)],
    )
    with django_assert_num_queries(8 + 2):
        lifecycle.worker_events_apply(batch=batch)
    # Redelivered: nothing new, so no balance, ledger or meter statement.
    with django_assert_num_queries(5 + 2):
        lifecycle.worker_events_apply(batch=batch)
    assert MeterEventReport.objects.filter(usage_record__session_id=session.id).count() == size * len(KIMI_TURN)


def test_one_batch_of_several_sessions_bills_each_organization_once_and_drops_only_the_unknown(
    api: Any, make_client: Any, django_assert_num_queries: Any
) -> None:
    other = make_client("Other Org")
    mine, also_mine, theirs = (
        VoiceSessionFactory.create(organization=api.org),
        VoiceSessionFactory.create(organization=api.org),
        VoiceSessionFactory.create(organization=other.org),
    )
    ghost = "00000000-0000-0000-0000-000000000000"
    before = {s.pk: _balance(s) for s in (mine, theirs)}
    events = [
        _segment(mine, 0, "mine"),
        _segment(theirs, 0, "theirs"),
        usage_event(mine, *KIMI_TURN),
        usage_event(also_mine, *KIMI_TURN),
        usage_event(theirs, *KIMI_TURN),
        contracts.TranscriptSegment(session_id=ghost, role="user", text="?", start_offset_ms=0, end_offset_ms=1),
    ]
    batch = contracts.EventBatch(
        segments=[e for e in events if isinstance(e, contracts.TranscriptSegment)],
        usage=[e for e in events if isinstance(e, contracts.UsageReported)],
    )
    # One more statement than for one organization: its balance (the ledger posts go in together).
    with django_assert_num_queries(9 + 2):
        tasks.event_batch.apply(kwargs={"payload": batch.model_dump(mode="json")}).get()
    tasks.event_batch.apply(kwargs={"payload": batch.model_dump(mode="json")}).get()  # redelivered

    assert [s.text for s in TranscriptSegment.objects.filter(session=mine)] == ["mine"]
    assert [s.text for s in TranscriptSegment.objects.filter(session=theirs)] == ["theirs"]
    assert not TranscriptSegment.objects.filter(event_id=events[-1].event_id).exists()
    assert before[mine.pk] - _balance(mine) == 2 * Decimal("0.0487184")
    assert before[theirs.pk] - _balance(theirs) == Decimal("0.0487184")
    posts = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE)
    assert sorted(posts.values_list("account__organization", flat=True)) == sorted([api.org.pk, other.org.pk])


def test_a_missing_price_holds_back_only_its_own_event_until_the_retry(api: Any, make_client: Any) -> None:
    from billing.pricing import PriceMissing

    other = make_client("Other Org")
    priced, unpriced = (
        VoiceSessionFactory.create(organization=api.org),
        VoiceSessionFactory.create(organization=other.org),
    )
    ready = usage_event(priced, *KIMI_TURN)
    waiting = usage_event(unpriced, (C.TTS_CHARACTERS, "bulbul:v9", 100), *KIMI_TURN)
    batch = contracts.EventBatch(usage=[waiting, ready])

    with pytest.raises(PriceMissing, match="bulbul:v9"):  # the task retries on it
        lifecycle.worker_events_apply(batch=batch)
    assert UsageRecord.objects.filter(session_id=priced.id).count() == len(KIMI_TURN)
    assert not UsageRecord.objects.filter(session_id=unpriced.id).exists()  # none of its items, not some

    bulbul = ModelPrice.objects.get(model="bulbul:v3")
    bulbul.pk, bulbul.model = None, "bulbul:v9"
    bulbul.save()  # the admin adds the row; the retry applies the rest, and nothing twice
    lifecycle.worker_events_apply(batch=batch)
    assert UsageRecord.objects.filter(session_id=priced.id).count() == len(KIMI_TURN)
    assert UsageRecord.objects.filter(session_id=unpriced.id).count() == 1 + len(KIMI_TURN)
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE).count() == 2


# Priced in USD at 0.52 per million: a record's cost is exact, so the expected total is too.
_PER_TOKEN = Decimal("0.52") / 1_000_000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pool=st.lists(st.tuples(st.booleans(), st.integers(1, 5_000)), min_size=1, max_size=8),
    deliveries=st.lists(
        st.tuples(st.booleans(), st.lists(st.integers(0, 7), min_size=1, max_size=10)), min_size=1, max_size=5
    ),
)
def test_any_deliveries_with_repeats_store_and_charge_exactly_the_distinct_events(
    pool: list[tuple[bool, int]], deliveries: list[tuple[bool, list[int]]]
) -> None:
    """Events (segments, or usage of ``tokens``) delivered in batches or alone, repeated and in
    any order: the stored rows and the ledger are those of the distinct events delivered."""
    session = VoiceSessionFactory.create()  # its own organization and account each example
    sid = str(session.id)
    events: list[contracts.WorkerEvent] = [
        usage_event(session, (C.LLM_INPUT_TOKENS, "kimi-k2.5", tokens))
        if is_usage
        else _segment(session, 1000 * n, f"line {n}")
        for n, (is_usage, tokens) in enumerate(pool)
    ]
    before = _balance(session)
    delivered: dict[str, contracts.WorkerEvent] = {}
    for alone, picks in deliveries:
        chosen = [events[i % len(events)] for i in picks]
        delivered.update((e.event_id, e) for e in chosen)
        if alone:
            for event in chosen:
                if isinstance(event, contracts.UsageReported):
                    lifecycle.usage_add(usage=event)
                elif isinstance(event, contracts.TranscriptSegment):
                    lifecycle.transcript_segment_add(segment=event)
        else:
            lifecycle.worker_events_apply(
                batch=contracts.EventBatch(
                    session_id=sid,
                    segments=[e for e in chosen if isinstance(e, contracts.TranscriptSegment)],
                    usage=[e for e in chosen if isinstance(e, contracts.UsageReported)],
                )
            )

    usage = [e for e in delivered.values() if isinstance(e, contracts.UsageReported)]
    segments = [e for e in delivered.values() if isinstance(e, contracts.TranscriptSegment)]
    expected = sum((Decimal(int(e.items[0].quantity)) * _PER_TOKEN for e in usage), Decimal(0))
    stored = set(TranscriptSegment.objects.filter(session=session).values_list("event_id", flat=True))
    assert stored == {e.event_id for e in segments}
    records = UsageRecord.objects.filter(session_id=session.id)
    assert sorted(records.values_list("event_id", flat=True)) == sorted(e.event_id for e in usage)
    debited = LedgerEntry.objects.filter(account__organization=session.organization, kind=LedgerEntry.Kind.USAGE)
    assert -(debited.aggregate(t=Sum("amount"))["t"] or 0) == expected == before - _balance(session)
    assert MeterEventReport.objects.filter(usage_record__session_id=session.id).count() == len(usage)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("seeded_prices")
@pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="two workers at once need PostgreSQL's row locks (SQLite serialises writers itself)",
)
def test_two_workers_applying_the_same_events_at_once_count_each_once() -> None:
    """A redelivery racing the first delivery (acks late, a worker presumed lost): both workers
    insert the same event ids at the same moment, in different orders and batches."""
    session = VoiceSessionFactory.create()
    before = _balance(session)
    rounds = 6
    for round_ in range(rounds):
        segments = [_segment(session, 10_000 * round_ + 1000 * i, f"r{round_} line {i}") for i in range(6)]
        usage = [usage_event(session, *KIMI_TURN) for _ in range(4)]
        batches = [
            contracts.EventBatch(segments=segments, usage=usage),
            contracts.EventBatch(segments=segments[::-1], usage=usage[::-1]),
        ]
        barrier = threading.Barrier(len(batches))
        errors: list[BaseException] = []

        def apply(batch: contracts.EventBatch, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            try:
                barrier.wait(timeout=30)
                lifecycle.worker_events_apply(batch=batch)
            except BaseException as error:  # reported below, on the test's thread
                errors.append(error)
            finally:
                connection.close()

        workers = [threading.Thread(target=apply, args=(batch,)) for batch in batches]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert errors == []

    assert TranscriptSegment.objects.filter(session=session).count() == rounds * 6
    records = UsageRecord.objects.filter(session_id=session.id)
    assert records.count() == rounds * 4 * len(KIMI_TURN)
    assert (
        LedgerEntry.objects.filter(account__organization=session.organization)
        .exclude(kind=LedgerEntry.Kind.GRANT)
        .count()
        == rounds
    )  # one post per round: whoever inserted the events
    charged = records.aggregate(t=Sum("cost"))["t"]
    assert before - _balance(session) == charged == rounds * 4 * Decimal("0.0487184")


def test_what_callers_and_tools_say_is_stored_whatever_characters_it_holds(api: Any) -> None:
    """A NUL (PostgreSQL text refuses it) or a lone surrogate (UTF-8 cannot hold it) in a caller's
    words or a customer's tool answer is dropped or replaced, and the line is stored."""
    session = VoiceSessionFactory.create(organization=api.org)
    line = _segment(session, 0, "haan\x00ji \ud800theek")
    tool = contracts.TranscriptSegment(
        session_id=str(session.id),
        role="tool",
        text="lookup_order",
        start_offset_ms=1000,
        end_offset_ms=1000,
        tool_call=contracts.ToolCallRecord(name="lookup_order", result='{"status": "sh\x00ipped"}'),
    )
    _send_batch(session, line, tool)
    stored = {s.role: s for s in TranscriptSegment.objects.filter(session=session)}
    assert stored["user"].text == "haanji ?theek"
    assert stored["tool"].tool_call is not None and stored["tool"].tool_call["result"] == '{"status": "shipped"}'


@pytest.mark.skipif(not ON_POSTGRESQL, reason="SQLite stores any number in a decimal column")
def test_an_event_the_database_refuses_drops_only_itself(api: Any, make_client: Any) -> None:
    """A batch carries every session of a worker process; one impossible event must not cost the
    other callers their lines and their usage."""
    other = make_client("Other Org")
    mine, theirs = VoiceSessionFactory.create(organization=api.org), VoiceSessionFactory.create(organization=other.org)
    before = _balance(theirs)
    overflow = usage_event(mine, (contracts.UsageComponent.STT_SECONDS, "saaras:v3", 1e16))  # beyond the column
    events: list[contracts.WorkerEvent] = [
        _segment(mine, 0, "mine"),
        overflow,
        _segment(theirs, 0, "theirs"),
        usage_event(theirs, *KIMI_TURN),
    ]
    batch = contracts.EventBatch(
        segments=[e for e in events if isinstance(e, contracts.TranscriptSegment)],
        usage=[e for e in events if isinstance(e, contracts.UsageReported)],
    )
    assert tasks.event_batch.apply(kwargs={"payload": batch.model_dump(mode="json")}).successful()
    assert sorted(TranscriptSegment.objects.values_list("text", flat=True)) == ["mine", "theirs"]
    assert before - _balance(theirs) == Decimal("0.0487184")
    assert not UsageRecord.objects.filter(event_id=overflow.event_id).exists()
