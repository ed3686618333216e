"""Reads: a session's usage and cost, an organization's usage over time, its account and limits,
current prices. Data only (Decimals, dataclasses): serializers and templates format it.

Every read takes the organization: no cross-tenant reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Organization
from billing.models import BILLING_CURRENCY, BillingAccount, LedgerEntry, ModelPrice, UsageRecord
from billing.pricing import OPENROUTER_DEFAULT_MODEL

MAX_USAGE_RANGE_DAYS = 366


@dataclass(frozen=True)
class UsageLine:
    component: str
    model: str
    provider: str
    quantity: Decimal
    cost: Decimal  # USD


@dataclass(frozen=True)
class SessionUsage:
    currency: str
    total_cost: Decimal
    items: list[UsageLine]


@dataclass(frozen=True)
class DailyUsageLine:
    date: date
    component: str
    model: str
    quantity: Decimal
    cost: Decimal  # USD


@dataclass(frozen=True)
class DailyUsage:
    start: date
    end: date
    currency: str
    total_cost: Decimal
    items: list[DailyUsageLine]


@dataclass(frozen=True)
class UsageSeries:
    """Cost per UTC day from ``days[0]`` to ``days[-1]`` (every day, zero when idle), one list per
    component or model, in the order of ``days``."""

    days: list[date]
    currency: str
    total_cost: Decimal
    series: dict[str, list[Decimal]]


@dataclass(frozen=True)
class LedgerLine:
    created_at: datetime
    kind: str
    amount: Decimal  # USD; negative for usage
    description: str


@dataclass(frozen=True)
class BillingLimits:
    currency: str
    prepaid: bool
    balance: Decimal
    spend_cap_monthly: Decimal | None
    month_to_date_spend: Decimal
    max_concurrent_sessions: int
    payment_failed: bool


@dataclass(frozen=True)
class PriceInForce:
    component: str
    currency: str
    unit_price: Decimal  # in currency per per_units
    per_units: int
    confirmed: bool


def billing_account_get(*, organization: Organization) -> BillingAccount:
    """The account opened with the organization (``billing.receivers``)."""
    return BillingAccount.objects.get(organization=organization)


def session_usage(*, organization: Organization, session_id: uuid.UUID | str) -> SessionUsage:
    """Quantity and cost per component and model of one session, and the total, in USD."""
    rows = (
        UsageRecord.objects.filter(organization=organization, session_id=session_id)
        .values("component", "model", "provider")
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
        .order_by("component", "model")
    )
    items = [
        UsageLine(
            component=r["component"], model=r["model"], provider=r["provider"], quantity=r["quantity"], cost=r["cost"]
        )
        for r in rows
    ]
    return SessionUsage(currency=BILLING_CURRENCY, total_cost=sum((i.cost for i in items), Decimal(0)), items=items)


def usage_by_day(*, organization: Organization, start: date, end: date) -> DailyUsage:
    """Usage from ``start`` to ``end`` inclusive (UTC days), by day, component and model."""
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    rows = (
        UsageRecord.objects.filter(organization=organization, occurred_at__gte=since, occurred_at__lt=until)
        .annotate(day=TruncDate("occurred_at", tzinfo=UTC))
        .values("day", "component", "model")
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
        .order_by("day", "component", "model")
    )
    items = [
        DailyUsageLine(
            date=r["day"], component=r["component"], model=r["model"], quantity=r["quantity"], cost=r["cost"]
        )
        for r in rows
    ]
    return DailyUsage(
        start=start,
        end=end,
        currency=BILLING_CURRENCY,
        total_cost=sum((i.cost for i in items), Decimal(0)),
        items=items,
    )


def usage_series(*, organization: Organization, start: date, end: date, by: str = "component") -> UsageSeries:
    """``usage_by_day`` as one cost series per component (``by="component"``) or model, for a chart."""
    if by not in ("component", "model"):
        raise ValueError(f"usage_series groups by component or model, not {by!r}")
    usage = usage_by_day(organization=organization, start=start, end=end)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    position = {day: n for n, day in enumerate(days)}
    series: dict[str, list[Decimal]] = {}
    for line in usage.items:
        costs = series.setdefault(getattr(line, by), [Decimal(0)] * len(days))
        costs[position[line.date]] += line.cost
    return UsageSeries(days=days, currency=usage.currency, total_cost=usage.total_cost, series=series)


def session_costs(*, organization: Organization, session_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Decimal]:
    """Total cost of each of these sessions that has usage (one query for a page of sessions)."""
    rows = (
        UsageRecord.objects.filter(organization=organization, session_id__in=list(session_ids))
        .values("session_id")
        .annotate(cost=Sum("cost"))
        .order_by()
    )
    return {r["session_id"]: r["cost"] for r in rows}


def ledger_list(*, organization: Organization, limit: int = 100) -> list[LedgerLine]:
    """The latest changes to the organization's balance, newest first: grants, top-ups, usage, adjustments."""
    entries = LedgerEntry.objects.filter(account__organization=organization).order_by("-created_at", "-id")[:limit]
    return [
        LedgerLine(created_at=e.created_at, kind=e.kind, amount=e.amount, description=e.description) for e in entries
    ]


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_to_date_spend(*, organization: Organization, now: datetime | None = None) -> Decimal:
    since = month_start(now or timezone.now())
    total = UsageRecord.objects.filter(organization=organization, occurred_at__gte=since).aggregate(s=Sum("cost"))["s"]
    return total or Decimal(0)


def billing_limits(*, organization: Organization) -> BillingLimits:
    """The account's balance and caps. How many sessions are live is the voice app's to count."""
    account = billing_account_get(organization=organization)
    return BillingLimits(
        currency=BILLING_CURRENCY,
        prepaid=account.prepaid,
        balance=account.balance,
        spend_cap_monthly=account.spend_cap_monthly,
        month_to_date_spend=month_to_date_spend(organization=organization),
        max_concurrent_sessions=account.max_concurrent_sessions,
        payment_failed=account.payment_failed,
    )


def prices_in_force(*, model: str, at: datetime | None = None) -> list[PriceInForce]:
    """The current price of each component of ``model`` (OpenRouter ids fall back to the default)."""
    at = at or timezone.now()
    found: dict[str, ModelPrice] = {}
    for candidate in (model, OPENROUTER_DEFAULT_MODEL) if "/" in model else (model,):
        for row in ModelPrice.objects.filter(model=candidate, effective_from__lte=at).order_by("-effective_from"):
            found.setdefault(row.component, row)
    return [
        PriceInForce(
            component=row.component,
            currency=row.currency,
            unit_price=row.unit_price,
            per_units=row.per_units,
            confirmed=row.confirmed,
        )
        for row in sorted(found.values(), key=lambda r: r.component)
    ]
