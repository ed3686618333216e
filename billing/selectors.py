"""Reads: a session's usage and cost, an organization's usage over time, its limits, current prices.

Every read takes the organization (or a session already fetched through it): no cross-tenant reads.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Organization
from billing.models import BILLING_CURRENCY, ModelPrice, UsageRecord
from billing.pricing import OPENROUTER_DEFAULT_MODEL, display
from billing.services import billing_account_get_or_create, month_to_date_spend
from voice.models import VoiceSession

MAX_USAGE_RANGE_DAYS = 366


def session_usage(*, session: VoiceSession) -> dict[str, Any]:
    """Quantity and cost per component and model, and the total, in USD to six places."""
    rows = (
        UsageRecord.objects.filter(session=session)
        .values("component", "model", "provider")
        .annotate(quantity=Sum("quantity"), cost=Sum("cost"))
        .order_by("component", "model")
    )
    total = sum((r["cost"] for r in rows), Decimal(0))
    return {
        "currency": BILLING_CURRENCY,
        "total_cost": display(total),
        "items": [
            {
                "component": r["component"],
                "model": r["model"],
                "provider": r["provider"],
                "quantity": _quantity(r["quantity"]),
                "cost": display(r["cost"]),
            }
            for r in rows
        ],
    }


def usage_by_day(*, organization: Organization, start: date, end: date) -> dict[str, Any]:
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
    total = sum((r["cost"] for r in rows), Decimal(0))
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "currency": BILLING_CURRENCY,
        "total_cost": display(total),
        "items": [
            {
                "date": r["day"].isoformat(),
                "component": r["component"],
                "model": r["model"],
                "quantity": _quantity(r["quantity"]),
                "cost": display(r["cost"]),
            }
            for r in rows
        ],
    }


def billing_limits(*, organization: Organization) -> dict[str, Any]:
    account = billing_account_get_or_create(organization=organization)
    live = VoiceSession.objects.live().filter(organization=organization).count()
    return {
        "currency": BILLING_CURRENCY,
        "prepaid": account.prepaid,
        "balance": display(account.balance),
        "spend_cap_monthly": display(account.spend_cap_monthly) if account.spend_cap_monthly is not None else None,
        "month_to_date_spend": display(month_to_date_spend(organization=organization)),
        "max_concurrent_sessions": account.max_concurrent_sessions,
        "live_sessions": live,
        "payment_failed": account.payment_failed,
    }


def prices_in_force(*, model: str, at: datetime | None = None) -> list[dict[str, Any]]:
    """The current price of each component of ``model`` (OpenRouter ids fall back to the default)."""
    at = at or timezone.now()
    found: dict[str, ModelPrice] = {}
    for candidate in (model, OPENROUTER_DEFAULT_MODEL) if "/" in model else (model,):
        for row in ModelPrice.objects.filter(model=candidate, effective_from__lte=at).order_by("-effective_from"):
            found.setdefault(row.component, row)
    return [
        {
            "component": row.component,
            "currency": row.currency,
            "unit_price": str(row.unit_price.normalize()),
            "per_units": row.per_units,
            "confirmed": row.confirmed,
        }
        for row in sorted(found.values(), key=lambda r: r.component)
    ]


def _quantity(value: Decimal) -> str:
    return str(value.normalize()) if value != value.to_integral_value() else str(int(value))
