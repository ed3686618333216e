from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User

from accounts.models import ApiKey, Organization
from billing.services import MAX_TOP_UP, MIN_TOP_UP
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
    status = forms.ChoiceField(required=False, choices=[("", "Any status")])

    def __init__(self, *args: Any, status_choices: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["status"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Any status"), *status_choices]


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
