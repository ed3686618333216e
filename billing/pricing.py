"""The price in force for a component and model at a moment, and what a quantity costs in USD."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

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


class PriceBook:
    """The prices and exchange rates some usage needs, read once (one query for the prices of all
    its models, one for the rates of their currencies, none when all are USD) and then applied
    to each item at the moment it happened: a batch of usage costs two reads, not two per item."""

    def __init__(self, *, prices: list[ModelPrice], rates: list[ExchangeRate]) -> None:
        # Newest first per key: the first row not after a moment is the one in force then.
        self._prices: dict[tuple[str, str], list[ModelPrice]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from, reverse=True):
            self._prices.setdefault((price.component, price.model), []).append(price)
        self._rates: dict[str, list[ExchangeRate]] = {}
        for rate in sorted(rates, key=lambda r: r.effective_from, reverse=True):
            self._rates.setdefault(rate.currency, []).append(rate)

    @classmethod
    def load(cls, *, items: Iterable[tuple[str, str]], until: datetime) -> PriceBook:
        """The rows that can be in force up to ``until`` for these (component, model) pairs, with
        the ``openrouter/*`` default for ``vendor/model`` ids."""
        pairs = set(items)
        models = {model for _, model in pairs}
        if any("/" in model for model in models):
            models.add(OPENROUTER_DEFAULT_MODEL)
        prices = list(
            ModelPrice.objects.filter(
                component__in={component for component, _ in pairs}, model__in=models, effective_from__lte=until
            )
        )
        currencies = {p.currency for p in prices} - {BILLING_CURRENCY}
        rates = (
            list(ExchangeRate.objects.filter(currency__in=currencies, effective_from__lte=until)) if currencies else []
        )
        return cls(prices=prices, rates=rates)

    def price_in_force(self, *, component: str, model: str, at: datetime) -> ModelPrice:
        row = _in_force(self._prices.get((component, model), []), at)
        if row is None and "/" in model:
            row = _in_force(self._prices.get((component, OPENROUTER_DEFAULT_MODEL), []), at)
        if row is None:
            raise PriceMissing(f"No {component} price for model {model!r} in force at {at.isoformat()}")
        return row

    def usd_per_unit(self, *, currency: str, at: datetime) -> Decimal:
        if currency == BILLING_CURRENCY:
            return Decimal(1)
        rate = _in_force(self._rates.get(currency, []), at)
        if rate is None:
            raise PriceMissing(f"No {currency}→USD exchange rate in force at {at.isoformat()}")
        return rate.usd_per_unit

    def price(self, *, component: str, model: str, quantity: Decimal, at: datetime) -> Priced:
        price = self.price_in_force(component=component, model=model, at=at)
        rate = self.usd_per_unit(currency=price.currency, at=at)
        cost = (quantity * price.unit_price * rate / price.per_units).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)
        return Priced(price=price, usd_per_unit=rate, cost=cost)


_Row = TypeVar("_Row", ModelPrice, ExchangeRate)


def _in_force(newest_first: list[_Row], at: datetime) -> _Row | None:
    return next((row for row in newest_first if row.effective_from <= at), None)


def display(amount: Decimal) -> str:
    """Money as the API and the dashboard show it: six decimal places, always."""
    return str(amount.quantize(DISPLAY_QUANTUM, rounding=ROUND_HALF_EVEN))


def display_quantity(value: Decimal) -> str:
    """Seconds, characters or tokens as shown: whole numbers without a decimal point."""
    return format(value.normalize(), "f") if value != value.to_integral_value() else str(int(value))


def display_unit_price(value: Decimal) -> str:
    """A price as configured, without trailing zeros (and never in exponent form)."""
    return format(value.normalize(), "f")
