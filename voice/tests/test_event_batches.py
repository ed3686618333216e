"""A session's segments and usage arriving as batches: each event id takes effect once whatever
repeats, overlaps or arrives out of order, and a batch's usage is one ledger post."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from agent_worker import contracts
from billing.models import BillingAccount, LedgerEntry, ModelPrice, UsageRecord
from billing.tests.support import KIMI_TURN, usage_event
from voice import tasks
from voice.models import TranscriptSegment, VoiceSession
from voice.tests.factories import VoiceSessionFactory

pytestmark = pytest.mark.django_db


def _segment(session: VoiceSession, start: int, text: str) -> contracts.TranscriptSegment:
    return contracts.TranscriptSegment(
        session_id=str(session.id), role="user", text=text, start_offset_ms=start, end_offset_ms=start + 900
    )


def _send_batch(session: VoiceSession, *events: contracts.WorkerEvent) -> None:
    batch = contracts.EventBatch(
        session_id=str(session.id),
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
