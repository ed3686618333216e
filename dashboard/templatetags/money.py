"""Money and quantities as the dashboard shows them: the same text as the API."""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.pricing import display, display_quantity

register = template.Library()


@register.filter
def usd(value: Decimal | None) -> str:
    return "" if value is None else display(value)


@register.filter
def quantity(value: Decimal) -> str:
    return display_quantity(value)
