"""Prices and rates are edited here; usage, ledgers and Stripe events are read-only records."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest

from billing import services
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


class BillingAccountForm(forms.ModelForm):  # type: ignore[type-arg]  # generic only in the stubs
    credit_usd = forms.DecimalField(
        label="Credit (USD)",
        required=False,
        min_value=services.MIN_ADMIN_CREDIT,
        max_digits=12,
        decimal_places=2,
        help_text="Added to the balance as an adjustment, with an audit row.",
    )
    credit_note = forms.CharField(label="Why", required=False, max_length=200)

    class Meta:
        model = BillingAccount
        fields = list(services.LIMIT_FIELDS)

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if cleaned.get("credit_usd") and not cleaned.get("credit_note"):
            self.add_error("credit_note", "Say why the balance is credited.")
        return cleaned


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    """Limits and credits change through the services, which write their audit rows; accounts are
    opened with their organization, never here."""

    form = BillingAccountForm
    list_display = ["organization", "balance", *services.LIMIT_FIELDS]
    search_fields = ["organization__name", "stripe_customer_id"]
    fields = [
        "organization",
        "balance",
        *services.LIMIT_FIELDS,
        "credit_usd",
        "credit_note",
        "stripe_customer_id",
        "payment_status_at",
    ]
    # The balance only moves through the ledger (grants, top-ups and adjustments are ledger entries).
    readonly_fields = ["organization", "balance", "stripe_customer_id", "payment_status_at"]
    inlines = [LedgerInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: BillingAccount, form: Any, change: bool) -> None:
        actor = request.user if isinstance(request.user, User) else None
        data = form.cleaned_data
        services.billing_limits_change(account=obj, actor=actor, **{name: data[name] for name in services.LIMIT_FIELDS})
        if data.get("credit_usd"):
            services.balance_credit(
                account=obj,
                kind=LedgerEntry.Kind.ADJUSTMENT,
                amount=data["credit_usd"],
                reference=f"admin:{uuid.uuid4().hex}",
                description=data["credit_note"],
                actor=actor,
            )
            obj.refresh_from_db()


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
