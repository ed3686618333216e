"""Prices and rates are edited here; usage, ledgers and Stripe events are read-only records."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from billing.models import (
    BillingAccount,
    ExchangeRate,
    LedgerEntry,
    MeterEventReport,
    ModelPrice,
    ReconciliationReport,
    StripeWebhookEvent,
    TopUpCheckout,
    UsageRecord,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["model", "component", "unit_price", "currency", "per_units", "effective_from", "confirmed"]
    list_filter = ["component", "currency", "confirmed"]
    search_fields = ["model"]
    date_hierarchy = "effective_from"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A price already in force has priced usage: change it by adding a row with a later date.
        if obj is not None and UsageRecord.objects.filter(price=obj).exists():
            return ["component", "model", "currency", "unit_price", "per_units", "effective_from"]
        return []


@admin.register(ExchangeRate)
class ExchangeRateAdmin(admin.ModelAdmin):
    list_display = ["currency", "usd_per_unit", "effective_from", "source"]
    list_filter = ["currency"]


class LedgerInline(admin.TabularInline):
    model = LedgerEntry
    fields = ("created_at", "kind", "amount", "reference", "description")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-created_at"]
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "balance",
        "prepaid",
        "spend_cap_monthly",
        "max_concurrent_sessions",
        "payment_failed",
    ]
    search_fields = ["organization__name", "stripe_customer_id"]
    # The balance only moves through the ledger (grants and adjustments are ledger entries).
    readonly_fields = ["organization", "balance", "stripe_customer_id", "payment_status_at"]
    inlines = [LedgerInline]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "account", "kind", "amount", "reference"]
    list_filter = ["kind"]
    search_fields = ["reference", "account__organization__name"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["occurred_at", "organization", "session_id", "component", "model", "quantity", "cost"]
    list_filter = ["component", "model"]
    search_fields = ["event_id", "session_id", "organization__name"]
    date_hierarchy = "occurred_at"


@admin.register(MeterEventReport)
class MeterEventReportAdmin(ReadOnlyAdmin):
    list_display = ["identifier", "value", "status", "attempts", "sent_at"]
    list_filter = ["status"]
    search_fields = ["identifier"]


class EventOutcomeFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("applied", "Applied"), ("refused", "Refused (see error)"), ("pending", "Pending or retrying")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "applied":
            return queryset.filter(processed_at__isnull=False, error="")
        if self.value() == "refused":
            return queryset.filter(processed_at__isnull=False).exclude(error="")
        if self.value() == "pending":
            return queryset.filter(processed_at__isnull=True)
        return queryset


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "created", "received_at", "processed_at", "attempts", "error"]
    list_filter = [EventOutcomeFilter, "type"]
    search_fields = ["event_id"]


@admin.register(TopUpCheckout)
class TopUpCheckoutAdmin(ReadOnlyAdmin):
    list_display = ["stripe_id", "organization", "amount_cents", "currency", "status", "created_at", "credited_at"]
    list_filter = ["status"]
    search_fields = ["stripe_id", "organization__name"]


@admin.register(ReconciliationReport)
class ReconciliationReportAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "window_start", "window_end", "local_value", "stripe_value"]
