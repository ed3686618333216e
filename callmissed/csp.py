"""Content-Security-Policy on every response, with a fresh nonce per request.

Our pages load scripts and styles only from our own origin; the few inline blocks we cannot move
to a file (the API docs' initialisation, styles Redoc injects at run time) carry the request's
nonce, which templates read as ``{{ request.csp_nonce }}``. A script an attacker injects has no
nonce and does not run.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"
REPORT_ONLY_HEADER = "Content-Security-Policy-Report-Only"


def policy(nonce: str, override: dict[str, str] | None = None) -> str:
    form_targets = " ".join(["'self'", *settings.CSP_FORM_ACTION_ORIGINS])
    directives = {
        "default-src": "'self'",
        "script-src": f"'self' 'nonce-{nonce}'",
        "style-src": f"'self' 'nonce-{nonce}'",
        "img-src": "'self' data:",  # Swagger UI's and the admin's icons are data: URIs in their CSS
        "font-src": "'self' data:",
        "worker-src": "'self' blob:",  # Redoc's search index runs in a worker built from a blob
        "object-src": "'none'",
        "base-uri": "'self'",
        # Top-up forms post here and are redirected to Stripe Checkout, which browsers check too.
        "form-action": form_targets,
        "frame-ancestors": "'none'",
    }
    directives.update(override or {})
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        nonce = secrets.token_urlsafe(18)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
        response = self.get_response(request)
        if HEADER not in response and REPORT_ONLY_HEADER not in response:
            # Django's technical error pages (DEBUG only) are all inline styles and scripts: a developer
            # still sees them whole, with any violation reported in the console.
            header = REPORT_ONLY_HEADER if settings.DEBUG and response.status_code >= 400 else HEADER
            response[header] = policy(nonce, getattr(response, "csp_override", None))
        return response


def csp_override(**directives: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace directives for one view (``style_src="'self'"`` → ``style-src 'self'``): for the rare
    third-party page that cannot live under the whole policy, and only the directives it breaks."""
    override = {name.replace("_", "-"): value for name, value in directives.items()}

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            response = view(*args, **kwargs)
            response.csp_override = override
            return response

        return wrapper

    return decorate
