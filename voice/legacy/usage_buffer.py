"""The usage buffer: a call's usage gathered as the conversation reports it, and handed to billing
in one write every ``report_seconds`` (and at the end) rather than one per report.

It keeps what is not written yet (``take`` empties it) and the running totals the client is shown.
Time comes from ``now`` (``time.monotonic`` by default), so tests drive it by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from agent_worker import contracts

_Key = tuple[contracts.UsageComponent, str, str]  # component, model, provider


def _items(quantities: dict[_Key, float]) -> list[contracts.UsageItem]:
    return [
        contracts.UsageItem(component=component, model=model, provider=provider, quantity=round(quantity, 6))
        for (component, model, provider), quantity in sorted(quantities.items())
    ]


class UsageBuffer:
    def __init__(self, *, session_id: str, report_seconds: float, now: Callable[[], float] = time.monotonic) -> None:
        self.session_id = session_id
        self.report_seconds = report_seconds
        self.now = now
        self._pending: dict[_Key, float] = {}
        self._totals: dict[_Key, float] = {}
        self._taken_at = now()

    def add(self, items: Iterable[contracts.UsageItem]) -> None:
        for item in items:
            key = (contracts.UsageComponent(item.component), item.model, item.provider)
            self._pending[key] = self._pending.get(key, 0.0) + item.quantity
            self._totals[key] = self._totals.get(key, 0.0) + item.quantity

    def totals(self) -> list[contracts.UsageItem]:
        """Everything reported so far, one item per component, model and provider."""
        return _items(self._totals)

    def due(self) -> bool:
        return self.now() - self._taken_at >= self.report_seconds

    def take(self) -> contracts.UsageReported | None:
        """What is not written yet, summed per component, model and provider, as one usage event
        (None when there is nothing): from here on the caller owes it to billing. The buffer starts
        over, and the report interval with it."""
        self._taken_at = self.now()
        pending, self._pending = self._pending, {}
        if not pending:
            return None
        return contracts.UsageReported(session_id=self.session_id, items=_items(pending))
