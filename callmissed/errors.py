"""One error tree and one renderer: every API error leaves as the same envelope.

``{"error": {"code", "message", "fields", "request_id"}}`` — typed application errors,
DRF's validation/auth/throttling errors and Django's 404/403 all pass through here.
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.shortcuts import render
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

from callmissed.middleware import current_request_id

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    VALIDATION_ERROR = "validation_error"
    UNAUTHENTICATED = "unauthenticated"
    INVALID_API_KEY = "invalid_api_key"
    REVOKED_API_KEY = "revoked_api_key"
    EXPIRED_API_KEY = "expired_api_key"
    INVALID_TICKET = "invalid_ticket"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_ACCEPTABLE = "not_acceptable"
    CONFLICT = "conflict"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    PAYMENT_REQUIRED = "payment_required"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMIT = "concurrency_limit"
    CAPACITY_EXHAUSTED = "capacity_exhausted"
    UPSTREAM_ERROR = "upstream_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INTERNAL_ERROR = "internal_error"


class ApplicationError(Exception):
    """Base of every error a service raises on purpose."""

    code: ErrorCode = ErrorCode.INVALID_REQUEST
    status_code: int = status.HTTP_400_BAD_REQUEST
    default_message = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        fields: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.fields = fields or {}
        self.retry_after = retry_after
        super().__init__(self.message)


class ValidationFailed(ApplicationError):
    code = ErrorCode.VALIDATION_ERROR
    default_message = "The request has invalid fields."


class NotFound(ApplicationError):
    code = ErrorCode.NOT_FOUND
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Not found."


class Conflict(ApplicationError):
    code = ErrorCode.CONFLICT
    status_code = status.HTTP_409_CONFLICT


class IdempotencyConflict(ApplicationError):
    code = ErrorCode.IDEMPOTENCY_CONFLICT
    status_code = status.HTTP_409_CONFLICT
    default_message = "This Idempotency-Key was already used with a different request body."


class PaymentRequired(ApplicationError):
    code = ErrorCode.PAYMENT_REQUIRED
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_message = "Insufficient balance or spend cap reached."


class ConcurrencyLimit(ApplicationError):
    code = ErrorCode.CONCURRENCY_LIMIT
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_message = "Too many live sessions for this organization."


class CapacityExhausted(ApplicationError):
    code = ErrorCode.CAPACITY_EXHAUSTED
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "Voice capacity is exhausted right now; try again shortly."


class PayloadTooLarge(ApplicationError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_message = "The request body is too large."


class ServiceUnavailable(ApplicationError):
    """A dependency we need for this request (Redis, the broker) is down; retry after a moment."""

    code = ErrorCode.SERVICE_UNAVAILABLE
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "A dependency is briefly unavailable; try again shortly."


class UpstreamError(ApplicationError):
    code = ErrorCode.UPSTREAM_ERROR
    status_code = status.HTTP_502_BAD_GATEWAY
    default_message = "An upstream service failed."


# Connection failures of Redis (cache, channel layer) and of the Celery broker.
DEPENDENCY_OUTAGES: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, BrokerError)
DEPENDENCY_RETRY_AFTER_SECONDS = 5
# What a request meets when PostgreSQL is away, or picks it as a deadlock's victim: retryable too.
DATABASE_OUTAGES: tuple[type[Exception], ...] = (DatabaseOperationalError, DatabaseInterfaceError)


def envelope(
    code: str, message: str, *, fields: dict[str, Any] | None = None, request_id: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "code": str(code),
            "message": message,
            "fields": fields or {},
            "request_id": request_id if request_id is not None else current_request_id(),
        }
    }


def _flatten_detail(detail: Any) -> Any:
    """DRF's ErrorDetail trees → plain strings (lists of messages per field)."""
    if isinstance(detail, dict):
        return {str(k): _flatten_detail(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten_detail(v) for v in detail]
    return str(detail)


_DRF_CODES: dict[type[drf_exceptions.APIException], ErrorCode] = {
    drf_exceptions.ValidationError: ErrorCode.VALIDATION_ERROR,
    drf_exceptions.ParseError: ErrorCode.INVALID_REQUEST,
    drf_exceptions.AuthenticationFailed: ErrorCode.UNAUTHENTICATED,
    drf_exceptions.NotAuthenticated: ErrorCode.UNAUTHENTICATED,
    drf_exceptions.PermissionDenied: ErrorCode.PERMISSION_DENIED,
    drf_exceptions.NotFound: ErrorCode.NOT_FOUND,
    drf_exceptions.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    drf_exceptions.NotAcceptable: ErrorCode.NOT_ACCEPTABLE,
    drf_exceptions.UnsupportedMediaType: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    drf_exceptions.Throttled: ErrorCode.RATE_LIMITED,
}


def _drf_code(exc: drf_exceptions.APIException) -> str:
    explicit = getattr(exc, "callmissed_code", None)
    if explicit:
        return str(explicit)
    for cls in type(exc).__mro__:
        if cls in _DRF_CODES:
            return _DRF_CODES[cls]
    return ErrorCode.INVALID_REQUEST


# Sent on a 429/503 whose cause names no better wait (a throttle with no history, a dependency down).
DEFAULT_RETRY_AFTER_SECONDS = 1


def _with_retry_after(response: HttpResponse) -> HttpResponse:
    """429 and 503 always say when to come back (DESIGN.md), whatever raised them."""
    if response.status_code in (429, 503) and not response.has_header("Retry-After"):
        response["Retry-After"] = str(DEFAULT_RETRY_AFTER_SECONDS)
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF EXCEPTION_HANDLER: render any exception as the envelope."""
    response = _render_exception(exc)
    _with_retry_after(response)
    return response


def _render_exception(exc: Exception) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, ApplicationError):
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return Response(envelope(exc.code, exc.message, fields=exc.fields), status=exc.status_code, headers=headers)

    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # request.body past DATA_UPLOAD_MAX_MEMORY_SIZE (the Stripe webhook reads the raw body).
        return _render_exception(PayloadTooLarge())
    elif isinstance(exc, SuspiciousOperation | UnreadablePostError):
        # Too many query fields, a bad Host, a body cut off mid-read: the request, not the server.
        exc = drf_exceptions.ParseError("The request is malformed.")

    if isinstance(exc, drf_exceptions.APIException):
        code = _drf_code(exc)
        if isinstance(exc, drf_exceptions.ValidationError):
            detail = exc.detail
            if not isinstance(detail, dict):
                detail = {"non_field_errors": detail}
            fields = _flatten_detail(detail)
            message = _validation_message(fields)
            body = envelope(code, message, fields=fields)
        else:
            body = envelope(code, str(_flatten_detail(exc.detail)))
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        return Response(body, status=exc.status_code, headers=headers)

    if isinstance(exc, DEPENDENCY_OUTAGES + DATABASE_OUTAGES):
        # Redis, the broker or the database is away: the request may succeed in a moment, so say that.
        logger.warning("API request failed on an unreachable dependency: %r", exc)
        unavailable = ServiceUnavailable(retry_after=DEPENDENCY_RETRY_AFTER_SECONDS)
        return _render_exception(unavailable)

    logger.exception("Unhandled API error", exc_info=exc)
    return Response(envelope(ErrorCode.INTERNAL_ERROR, "Internal server error."), status=500)


def _validation_message(fields: dict[str, Any]) -> str:
    names = [k for k in fields if k != "non_field_errors"]
    if not names:
        first = fields.get("non_field_errors") or ["Invalid request."]
        return str(first[0] if isinstance(first, list) else first)
    first_name = names[0]
    first_msg = fields[first_name]
    while isinstance(first_msg, list | dict):
        first_msg = (list(first_msg.values()) if isinstance(first_msg, dict) else first_msg)[0]
    return f"{first_name}: {first_msg}"


# --- Django-level handlers (URLs outside DRF views) -------------------------------------------


def _wants_html(request: HttpRequest) -> bool:
    """Dashboard and admin pages get an HTML error page; the API and every JSON client get the envelope."""
    if request.path.startswith("/v1/") or request.path.startswith("/ws/"):
        return False
    accept = request.headers.get("Accept", "")
    return "text/html" in accept


# Set on the responses the handlers below build, so a technical page can be told from ours.
_PRODUCT_PAGE = "callmissed_error_page"


def _error_response(request: HttpRequest, status_code: int, code: ErrorCode, message: str) -> HttpResponse:
    response: HttpResponse
    if _wants_html(request):
        context = {"status": status_code, "message": message, "request_id": current_request_id()}
        response = render(request, "error.html", context, status=status_code)
    else:
        response = JsonResponse(envelope(code, message), status=status_code)
    setattr(response, _PRODUCT_PAGE, True)
    return response


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_response(request, 404, ErrorCode.NOT_FOUND, "Not found.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_response(request, 403, ErrorCode.PERMISSION_DENIED, "Permission denied.")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # Django sends every SuspiciousOperation here, RequestDataTooBig included.
    if isinstance(exception, RequestDataTooBig):
        return _error_response(request, 413, PayloadTooLarge.code, PayloadTooLarge.default_message)
    return _error_response(request, 400, ErrorCode.INVALID_REQUEST, "Bad request.")


def handler500(request: HttpRequest) -> HttpResponse:
    return _error_response(request, 500, ErrorCode.INTERNAL_ERROR, "Internal server error.")


def ensure_product_page(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """With DEBUG on, Django answers an unknown page or a crash with its technical page instead of
    calling the handlers above; a page outside the API gets the product's 404 or 500 all the same, so
    what a developer tries is what a customer sees. Crashes are still logged with their traceback."""
    if not settings.DEBUG or response.status_code not in (404, 500) or getattr(response, _PRODUCT_PAGE, False):
        return response
    if response.status_code == 404:
        return handler404(request)
    return handler500(request)


_CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHENTICATED,
    402: ErrorCode.PAYMENT_REQUIRED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    406: ErrorCode.NOT_ACCEPTABLE,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
    502: ErrorCode.UPSTREAM_ERROR,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}


def ensure_envelope(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """An API error that left without the envelope (Django's DEBUG pages, a bare ``HttpResponse``
    from a library) is replaced by one with the same status, so API clients parse every error alike."""
    if response.status_code < 400 or not request.path.startswith("/v1/"):
        return response
    if response.get("Content-Type", "").startswith("application/json"):
        return response
    status_code = response.status_code
    fallback = ErrorCode.INTERNAL_ERROR if status_code >= 500 else ErrorCode.INVALID_REQUEST
    code = _CODE_BY_STATUS.get(status_code, fallback)
    message = "Internal server error." if status_code >= 500 else f"{response.reason_phrase or 'Bad request'}."
    replaced = JsonResponse(envelope(code, message), status=status_code)
    for header in ("Retry-After", "Allow", "WWW-Authenticate"):
        if response.has_header(header):
            replaced[header] = response[header]
    return _with_retry_after(replaced)
