from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User

from accounts.models import ApiKey, Organization
from billing.services import MAX_TOP_UP, MIN_TOP_UP
from voice.selectors import METADATA_KEY_PATTERN
from webhooks.models import EventType

KEY_LIFETIME_CHOICES = [("", "Never expires"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year")]


class SignupForm(UserCreationForm):  # type: ignore[type-arg]  # generic only in the stubs
    email = forms.EmailField(required=True)
    organization_name = forms.CharField(
        max_length=Organization._meta.get_field("name").max_length, label="Organization"
    )

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def clean_email(self) -> str:
        email: str = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email already exists.")
        return email

    def clean_organization_name(self) -> str:
        name: str = self.cleaned_data["organization_name"].strip()
        if Organization.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError("That organization name is taken.")
        return name


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text="What this key is for, e.g. 'production backend'.",
    )
    lifetime_days = forms.TypedChoiceField(
        choices=KEY_LIFETIME_CHOICES, coerce=int, empty_value=None, required=False, label="Expires"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["name"].widget.attrs["placeholder"] = "production backend"


class SessionFilterForm(forms.Form):
    """The sessions list's filters; every field optional, an invalid one is shown, not applied."""

    session_id = forms.RegexField(
        regex=r"^[0-9a-fA-F-]{1,36}$",
        required=False,
        label="Session id",
        error_messages={"invalid": "A session id, or its first characters (0-9, a-f)."},
    )
    status = forms.ChoiceField(required=False, choices=[("", "Any status")])
    transport = forms.ChoiceField(required=False, choices=[("", "Any transport")])
    created_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    created_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    metadata_key = forms.RegexField(
        regex=rf"^{METADATA_KEY_PATTERN}$",
        required=False,
        label="Metadata key",
        error_messages={"invalid": "Letters, digits, '-' and '_', at most 64."},
    )
    metadata_value = forms.CharField(required=False, max_length=200, label="equals")

    def __init__(
        self,
        *args: Any,
        status_choices: list[tuple[str, str]],
        transport_choices: list[tuple[str, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, any_label, choices in (
            ("status", "Any status", status_choices),
            ("transport", "Any transport", transport_choices),
        ):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [("", any_label), *choices]
        self.fields["metadata_key"].widget.attrs["placeholder"] = "e.g. ticket"

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("created_from"), cleaned.get("created_to")
        if start and end and start > end:
            self.add_error("created_to", "Must not be before From.")
        if cleaned.get("metadata_value") and not cleaned.get("metadata_key"):
            self.add_error("metadata_key", "Which metadata key should equal this value?")
        return cleaned

    def selector_filters(self) -> dict[str, Any]:
        """The valid filters as ``voice_session_list`` takes them (dates are whole UTC days)."""
        if not self.is_valid():
            return {}
        data = self.cleaned_data
        filters: dict[str, Any] = {
            "status": data["status"] or None,
            "transport": data["transport"] or None,
            "id_prefix": data["session_id"] or None,
        }
        if data["created_from"]:
            filters["created_after"] = _day_start(data["created_from"])
        if data["created_to"]:
            filters["created_before"] = _day_start(data["created_to"] + timedelta(days=1))
        if data["metadata_key"]:
            filters["metadata"] = {data["metadata_key"]: data["metadata_value"]}
        return filters


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


DEFAULT_USAGE_DAYS = 30
USAGE_RANGE_CHOICES = [("7", "Last 7 days"), ("30", "Last 30 days"), ("90", "Last 90 days")]
USAGE_GROUP_CHOICES = [("component", "By component"), ("model", "By model")]


class UsageRangeForm(forms.Form):
    """The overview chart's range picker: how many days back, stacked by component or by model."""

    days = forms.TypedChoiceField(
        choices=USAGE_RANGE_CHOICES, coerce=int, required=False, empty_value=None, initial=str(DEFAULT_USAGE_DAYS)
    )
    by = forms.ChoiceField(choices=USAGE_GROUP_CHOICES, required=False, initial="component")

    def chosen(self) -> tuple[int, str]:
        """The days and grouping asked for; the defaults (30 days by component) for anything else."""
        if not self.is_valid():
            return DEFAULT_USAGE_DAYS, "component"
        return self.cleaned_data["days"] or DEFAULT_USAGE_DAYS, self.cleaned_data["by"] or "component"


class SpendCapForm(forms.Form):
    spend_cap_monthly = forms.DecimalField(
        label="Monthly spend cap (USD)",
        required=False,
        min_value=Decimal("1.00"),
        max_value=Decimal("1000000.00"),
        decimal_places=2,
        help_text="New sessions are refused once this month's usage reaches it. Leave empty for no cap.",
    )


class TopUpForm(forms.Form):
    amount_usd = forms.DecimalField(
        label="Amount (USD)", min_value=MIN_TOP_UP, max_value=MAX_TOP_UP, decimal_places=2, initial=20
    )


class WebhookEndpointForm(forms.Form):
    url = forms.URLField(max_length=2000, label="URL", assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices, widget=forms.CheckboxSelectMultiple, initial=EventType.values, label="Events"
    )
    description = forms.CharField(max_length=200, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["url"].widget.attrs["placeholder"] = "https://example.com/callmissed/webhooks"
