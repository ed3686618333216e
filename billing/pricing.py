"""The price in force for a component and model at a moment, and what a quantity costs in USD."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from billing.models import BILLING_CURRENCY, ExchangeRate, ModelPrice

# Any ``vendor/model`` without its own row is priced at this row's rates (editable in the admin).
OPENROUTER_DEFAULT_MODEL = "openrouter/*"
COST_QUANTUM = Decimal("0.000000000001")  # the 12 places costs are stored with
DISPLAY_QUANTUM = Decimal("0.000001")


class PriceMissing(Exception):
    """No price (or exchange rate) covers this usage: a configuration gap an admin must fill."""


@dataclass(frozen=True)
class Priced:
    price: ModelPrice
    usd_per_unit: Decimal
    cost: Decimal  # USD, COST_QUANTUM places


def _row_in_force(component: str, model: str, at: datetime) -> ModelPrice | None:
    return (
        ModelPrice.objects.filter(component=component, model=model, effective_from__lte=at)
        .order_by("-effective_from")
        .first()
    )


def price_in_force(*, component: str, model: str, at: datetime) -> ModelPrice:
    row = _row_in_force(component, model, at)
    if row is None and "/" in model:
        row = _row_in_force(component, OPENROUTER_DEFAULT_MODEL, at)
    if row is None:
        raise PriceMissing(f"No {component} price for model {model!r} in force at {at.isoformat()}")
    return row


def usd_per_unit(*, currency: str, at: datetime) -> Decimal:
    if currency == BILLING_CURRENCY:
        return Decimal(1)
    rate = ExchangeRate.objects.filter(currency=currency, effective_from__lte=at).order_by("-effective_from").first()
    if rate is None:
        raise PriceMissing(f"No {currency}→USD exchange rate in force at {at.isoformat()}")
    return rate.usd_per_unit


def price_usage(*, component: str, model: str, quantity: Decimal, at: datetime) -> Priced:
    price = price_in_force(component=component, model=model, at=at)
    rate = usd_per_unit(currency=price.currency, at=at)
    cost = (quantity * price.unit_price * rate / price.per_units).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)
    return Priced(price=price, usd_per_unit=rate, cost=cost)


def display(amount: Decimal) -> str:
    """Money as the API and the dashboard show it: six decimal places, always."""
    return str(amount.quantize(DISPLAY_QUANTUM, rounding=ROUND_HALF_EVEN))


def display_quantity(value: Decimal) -> str:
    """Seconds, characters or tokens as shown: whole numbers without a decimal point."""
    return format(value.normalize(), "f") if value != value.to_integral_value() else str(int(value))


def display_unit_price(value: Decimal) -> str:
    """A price as configured, without trailing zeros (and never in exponent form)."""
    return format(value.normalize(), "f")
