"""Input and output shapes of the billing API."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.core.validators import URLValidator
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.pricing import display, display_quantity
from billing.selectors import MAX_USAGE_RANGE_DAYS
from callmissed.serializers import StrictSerializer


@extend_schema_field(OpenApiTypes.STR)
class MoneyField(serializers.Field):
    """USD as a string with six decimal places: exact, and the same width on every row."""

    def to_representation(self, value: Decimal) -> str:
        return display(value)


@extend_schema_field(OpenApiTypes.STR)
class QuantityField(serializers.Field):
    """Seconds, characters or tokens as a decimal string."""

    def to_representation(self, value: Decimal) -> str:
        return display_quantity(value)


class UsageQuerySerializer(StrictSerializer):
    start = serializers.DateField(required=False, help_text="First UTC day (default: first day of this month).")
    end = serializers.DateField(required=False, help_text="Last UTC day, inclusive (default: today).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        today = timezone.now().date()
        end = attrs.get("end") or today
        start = attrs.get("start") or end.replace(day=1)
        if start > end:
            raise serializers.ValidationError({"start": ["Must be on or before end."]})
        if end >= date.max:
            # The range runs to the start of the day after end, which must still be a date.
            raise serializers.ValidationError({"end": [f"Must be before {date.max.isoformat()}."]})
        if end - start > timedelta(days=MAX_USAGE_RANGE_DAYS):
            raise serializers.ValidationError({"end": [f"The range is at most {MAX_USAGE_RANGE_DAYS} days."]})
        return {"start": start, "end": end}


class UsageRowSerializer(serializers.Serializer):
    date = serializers.DateField()
    component = serializers.CharField()
    model = serializers.CharField()
    quantity = QuantityField(help_text="Decimal string: seconds, characters or tokens.")
    cost = MoneyField(help_text="USD, six decimal places.")


class UsageOutputSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    currency = serializers.CharField()
    total_cost = MoneyField()
    items = UsageRowSerializer(many=True)


# Stripe redirects the payer's browser to these: web addresses only.
_WEB_URL = URLValidator(schemes=["http", "https"])


class CheckoutInputSerializer(StrictSerializer):
    amount_usd = serializers.DecimalField(max_digits=8, decimal_places=2)
    success_url = serializers.URLField(max_length=2000, validators=[_WEB_URL])
    cancel_url = serializers.URLField(max_length=2000, validators=[_WEB_URL])


class CheckoutOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    url = serializers.URLField()


class SessionUsageItemSerializer(serializers.Serializer):
    component = serializers.CharField()
    model = serializers.CharField()
    provider = serializers.CharField()
    quantity = QuantityField()
    cost = MoneyField()


class SessionUsageSerializer(serializers.Serializer):
    currency = serializers.CharField()
    total_cost = MoneyField()
    items = SessionUsageItemSerializer(many=True)
