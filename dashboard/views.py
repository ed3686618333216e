"""The customer dashboard: keys are managed only from a logged-in session, never with a key.

Views are adapters: they resolve the user's organization, call one service or selector and render.
Every object lookup is scoped to that organization, so another tenant's id is a 404.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import UTC, timedelta
from decimal import Decimal
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import Organization
from billing import selectors as billing_selectors
from billing import services as billing_services
from billing import stripe_gateway
from billing.pricing import display
from callmissed import ratelimit
from callmissed.errors import ApplicationError, Conflict, NotFound, ValidationFailed
from dashboard.forms import (
    ApiKeyCreateForm,
    SessionFilterForm,
    SignupForm,
    SpendCapForm,
    TopUpForm,
    UsageRangeForm,
    WebhookEndpointForm,
)
from dashboard.templatetags.money import component_name
from voice import lifecycle as voice_lifecycle
from voice import selectors as voice_selectors
from voice.models import TRANSPORT_CHOICES, VoiceSession
from webhooks import selectors as webhook_selectors
from webhooks import services as webhook_services

SESSIONS_PER_PAGE = 25
LEDGER_LINES = 100

View = Callable[..., HttpResponse]


def organization_required(view: Callable[..., HttpResponse]) -> View:
    """Log in first; then act for the user's organization, or explain that they have none."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        organization = account_selectors.organization_for_user(user=request.user)
        if organization is None:
            return render(request, "dashboard/no_organization.html", status=403)
        try:
            return view(request, organization, *args, **kwargs)
        except NotFound:
            raise Http404 from None

    return wrapper


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on pages that name no icon (the admin, the API docs)."""
    return redirect(static("dashboard/favicon.svg"), permanent=True)


def _throttle_message(retry_after: int) -> str:
    minutes = math.ceil(retry_after / 60)
    wait = f"{minutes} minute{'s' if minutes != 1 else ''}" if retry_after > 60 else "a minute"
    return f"Too many attempts from your network. Please wait {wait} and try again."


def _throttled(request: HttpRequest, template: str, context: dict[str, Any], retry_after: int) -> HttpResponse:
    """429 in the dashboard's own page, the form kept as the user filled it, and when to try again."""
    context["throttled"] = _throttle_message(retry_after)
    response = render(request, template, context, status=429)
    response["Retry-After"] = str(retry_after)
    return response


def _without_passwords(data: Any) -> dict[str, str]:
    return {name: value for name, value in data.items() if "password" not in name and name != "csrfmiddlewaretoken"}


def _login_username(request: HttpRequest) -> str:
    return str(request.POST.get("username", "")).strip().lower()


# A browser that once signed in as a user carries this signed cookie (OWASP's "device cookie"): the
# per-username throttle, which a stranger can trip with a few wrong passwords, does not lock it out.
DEVICE_COOKIE = "cm_device"
DEVICE_COOKIE_SALT = "dashboard.login-device"
DEVICE_COOKIE_MAX_AGE_SECONDS = 365 * 86400


def _known_device(request: HttpRequest, username: str) -> bool:
    try:
        signed = request.get_signed_cookie(
            DEVICE_COOKIE, salt=DEVICE_COOKIE_SALT, max_age=DEVICE_COOKIE_MAX_AGE_SECONDS
        )
    except (KeyError, signing.BadSignature):
        return False
    return bool(signed == username)


def _login_refusal(request: HttpRequest) -> int | None:
    """Seconds to wait when this login attempt is over a throttle, else None (and the attempt counted).

    Two throttles: attempts per client address (a scripted spray from one network) and attempts per
    username (a guessing run spread over many addresses), which a browser that signed in as that user
    before is exempt from; a success clears the username's count."""
    address = ratelimit.client_ip(request)
    by_address = ratelimit.hit("login-ip", address, ratelimit.parse_rate(settings.LOGIN_RATE_LIMIT))
    if not by_address.allowed:
        return by_address.retry_after
    username = _login_username(request)
    if username and not _known_device(request, username):
        by_user = ratelimit.hit("login-user", username, ratelimit.parse_rate(settings.LOGIN_FAILURE_LIMIT))
        if not by_user.allowed:
            return by_user.retry_after
    return None


def _login_succeeded(request: HttpRequest, response: HttpResponse) -> None:
    username = _login_username(request)
    ratelimit.reset("login-user", username, ratelimit.parse_rate(settings.LOGIN_FAILURE_LIMIT))
    response.set_signed_cookie(
        DEVICE_COOKIE,
        username,
        salt=DEVICE_COOKIE_SALT,
        max_age=DEVICE_COOKIE_MAX_AGE_SECONDS,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


class LoginView(auth_views.LoginView):
    """Django's login behind the login throttles: a refused attempt never reaches the password check."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        retry_after = _login_refusal(request)
        if retry_after is not None:
            # An unbound form: binding it would run authentication, which is what the throttle withholds.
            form = AuthenticationForm(request, initial=_without_passwords(request.POST))
            return _throttled(request, str(self.template_name), self.get_context_data(form=form), retry_after)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_valid(form)
        _login_succeeded(self.request, response)
        return response


def admin_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    """The admin's own login page behind the same throttles (staff passwords are worth guessing too)."""
    if request.method == "POST":
        retry_after = _login_refusal(request)
        if retry_after is not None:
            messages.error(request, _throttle_message(retry_after))
            request.method = "GET"  # the admin renders its page without binding (and authenticating) the form
            response = admin.site.login(request, extra_context)
            response.status_code = 429
            response["Retry-After"] = str(retry_after)
            return response
    response = admin.site.login(request, extra_context)
    if request.method == "POST" and request.user.is_authenticated:
        _login_succeeded(request, response)
    return response


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """A new account, throttled per client address; whether its organization gets the signup credit
    is decided here, where the client's address is known (billing grants it, once per owner's mailbox)."""
    if request.user.is_authenticated:
        return redirect("dashboard:overview")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        address = ratelimit.client_ip(request)
        allowed = ratelimit.hit("signup-ip", address, ratelimit.parse_rate(settings.SIGNUP_RATE_LIMIT))
        if not allowed.allowed:
            unbound = SignupForm(initial=_without_passwords(request.POST))
            return _throttled(request, "dashboard/signup.html", {"form": unbound}, allowed.retry_after)
        # The credit is money: while the cache is down nobody gets it, rather than everybody.
        credit_slot = ratelimit.hit(
            "signup-credit-ip",
            address,
            ratelimit.parse_rate(settings.BILLING_SIGNUP_CREDITS_PER_IP),
            fail_open=False,
        )
        user = account_services.account_signup(
            username=form.cleaned_data["username"],
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password1"],
            organization_name=form.cleaned_data["organization_name"],
            starter_credit=credit_slot.allowed,
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome! Create an API key to start your first voice session.")
        return redirect("dashboard:keys")
    return render(request, "dashboard/signup.html", {"form": form})


def _chart_number(value: Decimal) -> float:
    # Chart.js plots floats; the figures beside the chart stay exact Decimals.
    return float(value)


@organization_required
def overview(request: HttpRequest, organization: Organization) -> HttpResponse:
    voice_lifecycle.voice_sessions_expire_unjoined(organization=organization)
    range_form = UsageRangeForm(request.GET or None)
    days, group_by = range_form.chosen()
    today = timezone.now().astimezone(UTC).date()
    usage = billing_selectors.usage_series(
        organization=organization, start=today - timedelta(days=days - 1), end=today, by=group_by
    )
    name = component_name if group_by == "component" else str
    chart = {
        "currency": usage.currency,
        "labels": [day.isoformat() for day in usage.days],
        "datasets": [
            {"key": key, "label": name(key), "data": [_chart_number(cost) for cost in costs]}
            for key, costs in sorted(usage.series.items())
        ],
    }
    recent = list(voice_selectors.voice_session_list(organization=organization)[:5])
    active_keys = account_selectors.api_key_list(organization=organization).filter(revoked_at__isnull=True)
    context = {
        "organization": organization,
        "range_form": range_form,
        "days": days,
        "usage": usage,
        "chart": chart,
        "recent_sessions": _with_costs(organization, recent),
        "active_keys": active_keys.count(),
        "limits": billing_selectors.billing_limits(organization=organization),
        "live_sessions": voice_selectors.live_session_count(organization=organization),
        "disabled_webhooks": webhook_selectors.webhook_endpoints_disabled(organization=organization),
    }
    return render(request, "dashboard/overview.html", context)


@never_cache  # the page that shows a new key must never be cached by a browser or proxy
@require_http_methods(["GET", "POST"])
@organization_required
def keys(request: HttpRequest, organization: Organization) -> HttpResponse:
    form = ApiKeyCreateForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["lifetime_days"]
        created = account_services.api_key_create(
            organization=organization,
            name=form.cleaned_data["name"],
            created_by=request.user if request.user.is_authenticated else None,
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        form = ApiKeyCreateForm()
    context = {
        "organization": organization,
        "form": form,
        "created": created,
        "keys": account_selectors.api_key_list(organization=organization).select_related("created_by"),
        "now": timezone.now(),
    }
    return render(request, "dashboard/keys.html", context)


@require_POST
@organization_required
def key_revoke(request: HttpRequest, organization: Organization, key_id: str) -> HttpResponse:
    api_key = account_selectors.api_key_get(organization=organization, key_id=key_id)
    account_services.api_key_revoke(api_key=api_key, actor=request.user if request.user.is_authenticated else None)
    messages.success(request, f"Key {api_key.prefix}…{api_key.last4} revoked. Requests with it now fail.")
    return redirect("dashboard:keys")


@organization_required
def sessions(request: HttpRequest, organization: Organization) -> HttpResponse:
    voice_lifecycle.voice_sessions_expire_unjoined(organization=organization)
    filters = SessionFilterForm(
        request.GET or None,
        status_choices=list(VoiceSession.Status.choices),
        transport_choices=list(TRANSPORT_CHOICES),
    )
    queryset = voice_selectors.voice_session_list(organization=organization, **filters.selector_filters())
    page = Paginator(queryset, SESSIONS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "filters": filters,
        "filtered": any(value for name, value in request.GET.items() if name != "page"),
        "query": query.urlencode(),
        "rows": _with_costs(organization, list(page)),
    }
    return render(request, "dashboard/sessions.html", context)


def _with_costs(organization: Organization, sessions: list[VoiceSession]) -> list[tuple[VoiceSession, Decimal | None]]:
    """Each session with its total cost (None before any usage), for the sessions table."""
    costs = billing_selectors.session_costs(organization=organization, session_ids=[s.id for s in sessions])
    return [(session, costs.get(session.id)) for session in sessions]


@organization_required
def session_detail(request: HttpRequest, organization: Organization, session_id: str) -> HttpResponse:
    voice_lifecycle.voice_sessions_expire_unjoined(organization=organization)
    detail = voice_selectors.voice_session_detail(organization=organization, session_id=session_id)
    session = detail.session
    per_turn = [turn if isinstance(turn, dict) else {} for turn in detail.latency.per_turn]
    latency_chart = {
        "labels": [f"Turn {n}" for n in range(1, len(per_turn) + 1)],
        "datasets": [
            {"key": key, "label": label, "data": [turn.get(key) for turn in per_turn]} for key, label in LATENCY_SERIES
        ],
    }
    context = {
        "session": session,
        "metadata": sorted((session.metadata or {}).items()),
        "segments": voice_selectors.transcript_list(session=session),
        "latency": detail.latency,
        "latency_chart": latency_chart,
        "usage": detail.usage,
    }
    return render(request, "dashboard/session_detail.html", context)


# What the worker reports per turn (``contracts.TurnLatency``), as the latency chart names it.
LATENCY_SERIES = (
    ("end_of_speech_to_first_audio_ms", "End of speech to first agent audio"),
    ("llm_ttft_ms", "Language model: time to first token"),
    ("tts_ttfb_ms", "Speech synthesis: time to first byte"),
)


@require_http_methods(["GET", "POST"])
@organization_required
def billing(request: HttpRequest, organization: Organization) -> HttpResponse:
    form = TopUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and stripe_gateway.enabled():
        back = request.build_absolute_uri(reverse("dashboard:billing"))
        try:
            checkout = billing_services.checkout_create(
                organization=organization,
                amount=form.cleaned_data["amount_usd"],
                success_url=f"{back}?paid=1",
                cancel_url=back,
                idempotency_key=f"cm-checkout-{organization.pk}-{uuid.uuid4().hex}",
            )
        except (stripe_gateway.StripeFailure, ApplicationError):
            messages.error(request, "Payments are unavailable right now; please try again in a minute.")
        else:
            return redirect(checkout.url)
    return _billing_page(request, organization, top_up_form=form)


@require_POST
@organization_required
def spend_cap(request: HttpRequest, organization: Organization) -> HttpResponse:
    """An owner sets or clears the monthly spend cap, through the audited limits service."""
    if not account_selectors.is_owner(user=request.user, organization=organization):
        raise PermissionDenied("Only an owner of the organization can change its spend cap.")
    form = SpendCapForm(request.POST)
    if not form.is_valid():
        return _billing_page(request, organization, cap_form=form, status=400)
    cap = form.cleaned_data["spend_cap_monthly"]
    billing_services.billing_limits_change(
        account=billing_selectors.billing_account_get(organization=organization),
        actor=request.user if isinstance(request.user, User) else None,
        spend_cap_monthly=cap,
    )
    messages.success(request, f"Monthly spend cap set to {display(cap)} USD." if cap else "Monthly spend cap removed.")
    return redirect("dashboard:billing")


def _cents(amount: Decimal | None) -> Decimal | None:
    # The cap is stored to 12 places; the form edits whole cents.
    return None if amount is None else amount.quantize(Decimal("0.01"))


def _billing_page(
    request: HttpRequest,
    organization: Organization,
    *,
    top_up_form: TopUpForm | None = None,
    cap_form: SpendCapForm | None = None,
    status: int = 200,
) -> HttpResponse:
    limits = billing_selectors.billing_limits(organization=organization)
    owner = account_selectors.is_owner(user=request.user, organization=organization)
    context = {
        "organization": organization,
        "limits": limits,
        "live_sessions": voice_selectors.live_session_count(organization=organization),
        "ledger": billing_selectors.ledger_list(organization=organization, limit=LEDGER_LINES),
        "ledger_limit": LEDGER_LINES,
        "form": top_up_form or TopUpForm(),
        "cap_form": cap_form
        or (SpendCapForm(initial={"spend_cap_monthly": _cents(limits.spend_cap_monthly)}) if owner else None),
        "payments_enabled": stripe_gateway.enabled(),
        "paid": request.GET.get("paid") == "1",
    }
    return render(request, "dashboard/billing.html", context, status=status)


DELIVERIES_SHOWN = 50


def _actor(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


@never_cache  # the page that shows a new signing secret must never be cached
@require_http_methods(["GET", "POST"])
@organization_required
def webhooks(request: HttpRequest, organization: Organization) -> HttpResponse:
    form = WebhookEndpointForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = webhook_services.webhook_endpoint_create(
                organization=organization, actor=_actor(request), **form.cleaned_data
            )
        except ValidationFailed as refused:
            for field, problems in refused.fields.items():
                for problem in problems:
                    form.add_error(field if field in form.fields else None, problem)
        except Conflict as refused:  # the organization's endpoint cap
            form.add_error(None, refused.message)
        else:
            form = WebhookEndpointForm()
    context = {
        "form": form,
        "created": created,
        "endpoints": webhook_selectors.webhook_endpoint_list(organization=organization),
        "disabled": webhook_selectors.webhook_endpoints_disabled(organization=organization),
    }
    return render(request, "dashboard/webhooks.html", context)


def _webhook_page(request: HttpRequest, organization: Organization, endpoint_id: str, secret: str = "") -> HttpResponse:
    endpoint = webhook_selectors.webhook_endpoint_get(organization=organization, endpoint_id=endpoint_id)
    deliveries = webhook_selectors.webhook_delivery_list(endpoint=endpoint)[:DELIVERIES_SHOWN]
    context = {"endpoint": endpoint, "deliveries": deliveries, "secret": secret}
    return render(request, "dashboard/webhook_detail.html", context)


@never_cache
@organization_required
def webhook_detail(request: HttpRequest, organization: Organization, endpoint_id: str) -> HttpResponse:
    return _webhook_page(request, organization, endpoint_id)


@never_cache
@require_POST
@organization_required
def webhook_rotate(request: HttpRequest, organization: Organization, endpoint_id: str) -> HttpResponse:
    """Answers the page itself, not a redirect: the new secret is on it once and nowhere else."""
    endpoint = webhook_selectors.webhook_endpoint_get(organization=organization, endpoint_id=endpoint_id)
    rotated = webhook_services.webhook_endpoint_rotate_secret(endpoint=endpoint, actor=_actor(request))
    return _webhook_page(request, organization, endpoint_id, secret=rotated.secret)


@require_POST
@organization_required
def webhook_toggle(request: HttpRequest, organization: Organization, endpoint_id: str) -> HttpResponse:
    endpoint = webhook_selectors.webhook_endpoint_get(organization=organization, endpoint_id=endpoint_id)
    endpoint = webhook_services.webhook_endpoint_update(
        endpoint=endpoint, enabled=not endpoint.enabled, actor=_actor(request)
    )
    messages.success(request, f"{endpoint.url} {'enabled' if endpoint.enabled else 'disabled'}.")
    return redirect("dashboard:webhook_detail", endpoint_id=endpoint.pk)


@require_POST
@organization_required
def webhook_delete(request: HttpRequest, organization: Organization, endpoint_id: str) -> HttpResponse:
    endpoint = webhook_selectors.webhook_endpoint_get(organization=organization, endpoint_id=endpoint_id)
    webhook_services.webhook_endpoint_delete(endpoint=endpoint, actor=_actor(request))
    messages.success(request, f"{endpoint.url} deleted.")
    return redirect("dashboard:webhooks")


@require_POST
@organization_required
def webhook_redeliver(
    request: HttpRequest, organization: Organization, endpoint_id: str, delivery_id: str
) -> HttpResponse:
    endpoint = webhook_selectors.webhook_endpoint_get(organization=organization, endpoint_id=endpoint_id)
    delivery = webhook_selectors.webhook_delivery_get(endpoint=endpoint, delivery_id=delivery_id)
    try:
        webhook_services.webhook_delivery_redeliver(delivery=delivery)
    except ApplicationError as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, f"{delivery.event_type} {delivery.event_id} queued for delivery.")
    return redirect("dashboard:webhook_detail", endpoint_id=endpoint.pk)
