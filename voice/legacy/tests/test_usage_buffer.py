"""The usage buffer on a hand-driven clock: what billing is handed, and when."""

from __future__ import annotations

from agent_worker import contracts
from voice.legacy.usage_buffer import UsageBuffer

STT = contracts.UsageComponent.STT_SECONDS
LLM_IN = contracts.UsageComponent.LLM_INPUT_TOKENS


class HandClock:
    def __init__(self) -> None:
        self.at = 50.0

    def __call__(self) -> float:
        return self.at


def item(component: contracts.UsageComponent, quantity: float, model: str = "saaras:v3") -> contracts.UsageItem:
    return contracts.UsageItem(component=component, model=model, provider="sarvam", quantity=quantity)


def quantities(items: list[contracts.UsageItem]) -> list[tuple[str, str, float]]:
    return [(str(i.component), i.model, i.quantity) for i in items]


def test_reports_are_summed_per_component_and_model_into_one_event() -> None:
    buffer = UsageBuffer(session_id="s-1", report_seconds=5.0, now=HandClock())
    buffer.add([item(STT, 1.25), item(LLM_IN, 120, model="kimi-k2.5")])
    buffer.add([item(STT, 0.75), item(LLM_IN, 30, model="sarvam-m")])

    usage = buffer.take()

    assert usage is not None and usage.session_id == "s-1"
    assert quantities(usage.items) == [
        ("llm_input_tokens", "kimi-k2.5", 120),
        ("llm_input_tokens", "sarvam-m", 30),
        ("stt_seconds", "saaras:v3", 2.0),
    ]


def test_what_was_taken_is_never_taken_again_but_stays_in_the_totals() -> None:
    buffer = UsageBuffer(session_id="s-1", report_seconds=5.0, now=HandClock())
    buffer.add([item(STT, 1.0)])
    first = buffer.take()
    assert buffer.take() is None  # nothing new: no empty write
    buffer.add([item(STT, 0.5)])
    second = buffer.take()

    assert first is not None and second is not None
    assert first.event_id != second.event_id  # two writes, each applied once
    assert quantities(second.items) == [("stt_seconds", "saaras:v3", 0.5)]
    assert quantities(buffer.totals()) == [("stt_seconds", "saaras:v3", 1.5)]


def test_a_write_is_due_every_report_interval_counted_from_the_last_take() -> None:
    now = HandClock()
    buffer = UsageBuffer(session_id="s-1", report_seconds=5.0, now=now)
    now.at += 4.9
    assert not buffer.due()
    now.at += 0.1
    assert buffer.due()
    buffer.take()
    assert not buffer.due()
    now.at += 5.0
    assert buffer.due()


def test_quantities_are_rounded_to_the_micro_unit_billing_records() -> None:
    buffer = UsageBuffer(session_id="s-1", report_seconds=5.0, now=HandClock())
    buffer.add([item(STT, 0.1)] * 3)  # 0.30000000000000004 in floats
    usage = buffer.take()
    assert usage is not None and quantities(usage.items) == [("stt_seconds", "saaras:v3", 0.3)]
