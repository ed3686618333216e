"""Money: prices, exchange rates, immutable usage records, balances and what Stripe was told.

Every amount is a ``Decimal``; costs are stored to 12 places and shown to 6, so sums of many tiny
records stay exact. Prices and rates are rows with an ``effective_from``: a change never reprices
usage that happened before it.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from accounts.models import Organization
from agent_worker import contracts

COMPONENT_CHOICES = [(c.value, c.value) for c in contracts.UsageComponent]
BILLING_CURRENCY = "USD"


def money(**kwargs: object) -> models.DecimalField:
    """USD to 12 places: wide enough for a year of heavy usage, exact for sums of tiny records."""
    return models.DecimalField(max_digits=30, decimal_places=12, **kwargs)  # type: ignore[arg-type]


class ImmutableRowError(Exception):
    pass


class ModelPrice(models.Model):
    """``unit_price`` in ``currency`` per ``per_units`` of ``component`` for ``model``, from
    ``effective_from`` until the next row for the same component and model."""

    component = models.CharField(max_length=32, choices=COMPONENT_CHOICES)
    model = models.CharField(
        max_length=200, help_text="Model id as billed, e.g. kimi-k2.5, saaras:v3, or openrouter/* for the default."
    )
    currency = models.CharField(max_length=3, default=BILLING_CURRENCY)
    unit_price = models.DecimalField(max_digits=20, decimal_places=10)
    per_units = models.PositiveIntegerField(help_text="e.g. 1000000 tokens, 3600 seconds, 10000 characters")
    effective_from = models.DateTimeField()
    confirmed = models.BooleanField(default=False, help_text="Checked against the provider's price list.")
    source = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["component", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["component", "model", "effective_from"], name="uniq_price_effective")
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.component}: {self.unit_price} {self.currency}/{self.per_units}"


class ExchangeRate(models.Model):
    """How many billing-currency units (USD) one unit of ``currency`` is worth, from a date."""

    currency = models.CharField(max_length=3)
    usd_per_unit = models.DecimalField(max_digits=20, decimal_places=10)
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["currency", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["currency", "effective_from"], name="uniq_rate_effective")]

    def __str__(self) -> str:
        return f"1 {self.currency} = {self.usd_per_unit} USD"


class BillingAccount(models.Model):
    """One per organization: its balance, caps and Stripe customer."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="billing_account")
    prepaid = models.BooleanField(
        default=True, help_text="Prepaid accounts need a positive balance; others are invoiced."
    )
    balance = money(default=Decimal(0))
    spend_cap_monthly = money(null=True, blank=True, help_text="USD per calendar month (UTC); empty = no cap.")
    max_concurrent_sessions = models.PositiveIntegerField()
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    payment_failed = models.BooleanField(default=False)
    # The Stripe event time behind ``payment_failed``: an older event arriving late cannot undo it.
    payment_status_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.organization} ({self.balance:.2f} USD)"


class UsageRecord(models.Model):
    """One component's usage from one event, priced when it happened. Never updated."""

    event_id = models.CharField(max_length=64)
    index = models.PositiveSmallIntegerField()
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="usage_records")
    # The voice session's id, not a foreign key: billing does not depend on the voice app (sessions
    # are never deleted, only their content, so the id always names a row there).
    session_id = models.UUIDField(db_index=True)
    component = models.CharField(max_length=32, choices=COMPONENT_CHOICES)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=64)
    quantity = models.DecimalField(max_digits=20, decimal_places=6)
    occurred_at = models.DateTimeField(db_index=True)
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, related_name="+")
    unit_price = models.DecimalField(max_digits=20, decimal_places=10)
    per_units = models.PositiveIntegerField()
    price_currency = models.CharField(max_length=3)
    usd_per_unit = models.DecimalField(max_digits=20, decimal_places=10)
    cost = money(help_text="USD")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["occurred_at", "event_id", "index"]
        constraints = [models.UniqueConstraint(fields=["event_id", "index"], name="uniq_usage_event_index")]
        indexes = [models.Index(fields=["organization", "occurred_at"], name="usage_org_time")]

    def __str__(self) -> str:
        return f"{self.quantity} {self.component} of {self.model}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise ImmutableRowError("Usage records are immutable")
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class LedgerEntry(models.Model):
    """Every change to a balance, once per ``reference`` (a checkout, a usage event, a grant)."""

    class Kind(models.TextChoices):
        GRANT = "grant"
        TOP_UP = "top_up"
        USAGE = "usage"
        ADJUSTMENT = "adjustment"

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="ledger")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = money(help_text="USD; negative for usage")
    reference = models.CharField(max_length=128, unique=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.reference})"


class MeterEventReport(models.Model):
    """What Stripe is told about one usage record; ``identifier`` makes a resend harmless."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        SKIPPED = "skipped"  # no Stripe customer/key: nothing to bill through Stripe

    usage_record = models.OneToOneField(UsageRecord, on_delete=models.PROTECT, related_name="meter_report")
    identifier = models.CharField(max_length=100, unique=True)
    value = models.PositiveBigIntegerField(help_text="Micro-USD")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.identifier} ({self.status})"


class StripeWebhookEvent(models.Model):
    """Each Stripe event stored once on its id, applied once.

    ``processed_at`` empty: not applied yet (or a transient failure that will be retried).
    ``processed_at`` set and ``error`` empty: applied. Both set: refused for good, ``error`` says why.
    """

    event_id = models.CharField(max_length=255, primary_key=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="When Stripe created the event")
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the event was applied or refused for good (then error says why)."
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class TopUpCheckout(models.Model):
    """A Checkout Session this platform created for a top-up: the only payment a Stripe event may
    credit, and only for the organization, amount and currency it asked for."""

    class Status(models.TextChoices):
        OPEN = "open"
        CREDITED = "credited"

    stripe_id = models.CharField(max_length=255, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    amount_cents = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3, default="usd", help_text="Stripe's lower-case ISO code")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    credited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=models.Q(amount_cents__gt=0), name="top_up_amount_positive")]

    def __str__(self) -> str:
        return f"{self.stripe_id}: {self.amount_cents / 100:.2f} {self.currency.upper()} ({self.status})"


class ReconciliationReport(models.Model):
    """Local usage against what Stripe's meter summed, per customer and window."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    local_value = models.PositiveBigIntegerField(help_text="Micro-USD reported as sent")
    stripe_value = models.PositiveBigIntegerField(help_text="Micro-USD Stripe aggregated")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.organization}: drift {self.drift}"

    @property
    def drift(self) -> int:
        return self.stripe_value - self.local_value
