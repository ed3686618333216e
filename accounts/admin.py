from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from accounts import services
from accounts.models import ApiKey, AuditLog, Membership, Organization


def _staff(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # Through the service: audited, and opened with everything an organization has (billing).
        created = services.organization_create(name=obj.name, actor=_staff(request))
        obj.pk = created.pk
        obj.created_at = created.created_at
        obj._state.adding = False
        obj._state.db = created._state.db


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here with the secret shown once, in the response to the create; it is never
    stored, and never put in a message (the messages framework keeps them in a cookie)."""

    list_display = ["__str__", "name", "organization", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["organization", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "organization__name"]
    fields = ["organization", "name", "expires_at", "prefix", "last4", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "last4", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is not None:
            return [*self.readonly_fields, "organization"]
        return list(self.readonly_fields)

    @method_decorator(never_cache)  # the page that shows a new key must never be cached
    @method_decorator(csrf_protect)
    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method != "POST":
            return super().add_view(request, form_url, extra_context)
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = self.get_form(request)(request.POST)
        if not form.is_valid():
            return super().add_view(request, form_url, extra_context)  # Django's page, with the errors
        created = services.api_key_create(
            organization=form.cleaned_data["organization"],
            name=form.cleaned_data["name"],
            created_by=_staff(request),
            expires_at=form.cleaned_data["expires_at"],
        )
        self.log_addition(request, created.api_key, [{"added": {}}])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New API key",
            "created": created,
        }
        return TemplateResponse(request, "admin/accounts/apikey/created.html", context)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            raise PermissionDenied("API keys are created by add_view, through the service.")
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected keys now")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.api_key_revoke(api_key=key, actor=_staff(request))
        self.message_user(request, f"Revoked {queryset.count()} key(s).")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: usage and audit rows keep pointing at the key


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "organization", "action", "target", "actor"]
    list_filter = ["action"]
    search_fields = ["target", "organization__name"]
    readonly_fields = ["organization", "actor", "action", "target", "detail", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
