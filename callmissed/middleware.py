"""Request ids: one per request, echoed in ``X-Request-ID`` and in every error envelope.

The same first middleware also turns away API requests whose query string or ``Idempotency-Key``
could not be stored or compared (NUL, lone surrogates, non-ASCII keys) before any view sees them,
and makes sure every API error leaves in the envelope whatever produced it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse

from agent_worker import logs
from callmissed import jsonsafe

_request_id: ContextVar[str] = ContextVar("request_id", default="")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Stripe's rule for idempotency keys, and what reaches our database and Stripe's headers intact.
_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]*$")
API_PREFIX = "/v1/"


def current_request_id() -> str:
    return _request_id.get()


def _unstorable(text: str) -> str | None:
    """Why PostgreSQL (text or jsonb) could not take ``text``, or None when it can."""
    problem = jsonsafe.unstorable(text)
    return f"Must not contain {problem}." if problem else None


def _printable(name: str) -> str:
    return name if _unstorable(name) is None else name.encode("unicode_escape").decode("ascii")


def malformed_input(request: HttpRequest) -> dict[str, list[str]]:
    """Field errors for query parameters and headers of an API request that no view could use."""
    fields: dict[str, list[str]] = {}
    for name, values in request.GET.lists():
        problem = _unstorable(name) or next((p for p in map(_unstorable, values) if p), None)
        if problem:
            fields[_printable(name)] = [problem]
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        fields["Idempotency-Key"] = ["Use printable ASCII characters only."]
    return fields


def _refusal(request: HttpRequest) -> HttpResponse | None:
    from callmissed.errors import ErrorCode, envelope  # errors.py reads the request id from here

    try:
        fields = malformed_input(request)
    except SuspiciousOperation:  # e.g. more query fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
        return JsonResponse(envelope(ErrorCode.INVALID_REQUEST, "The query string is malformed."), status=400)
    if not fields:
        return None
    first = next(iter(fields))
    message = f"{first}: {fields[first][0]}"
    return JsonResponse(envelope(ErrorCode.INVALID_REQUEST, message, fields=fields), status=400)


class RequestIdMiddleware:
    header = "X-Request-ID"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get(self.header, "")
        request_id = incoming if _SAFE_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        token = _request_id.set(request_id)
        request.request_id = request_id  # type: ignore[attr-defined]
        # Not reset on the way out: Django logs 4xx/5xx responses after the middleware returned.
        logs.start_request(request_id)
        try:
            if request.path.startswith(API_PREFIX):
                from callmissed.errors import ensure_envelope

                response = ensure_envelope(request, _refusal(request) or self.get_response(request))
            else:
                response = self.get_response(request)
        finally:
            _request_id.reset(token)
        response[self.header] = request_id
        return response


class ProductErrorPageMiddleware:
    """Every page outside the API answers its 404s and 500s with the product's page, DEBUG or not
    (``errors.ensure_product_page``). Inside the Content-Security-Policy middleware, so the page it
    puts in place gets the policy too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(API_PREFIX):
            return response
        from callmissed.errors import ensure_product_page  # errors.py reads the request id from here

        return ensure_product_page(request, response)


class SyncStackMiddleware:
    """Last in ``MIDDLEWARE``, so the whole stack runs synchronously under ASGI.

    Django builds the stack from the inside out in the mode of the handler below each middleware;
    under ASGI the innermost handler is async, so every middleware that can run either way
    (Django's own: sessions, CSRF, auth, messages, ...) ran async, and each of their
    ``process_request``/``process_response`` hooks crossed into a thread and back, as did the
    sync ones around them (ours, WhiteNoise). One sync-only middleware at the bottom makes Django
    adapt once there and once at the top; everything between runs in one thread."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)
