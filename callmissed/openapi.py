"""The published schema: each operation from its own view class, and the error envelope with the
statuses each operation can answer.

The generator documents a path served by ``routing.Operations`` one operation per class. The
postprocessing hook adds the errors: views declare their success responses; every error goes
through ``callmissed.errors``, so the error side is the same for every operation and is added
here once instead of on each view.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import generators

from callmissed.errors import ErrorCode
from callmissed.routing import Operations

ENVELOPE = "ErrorEnvelope"


class EndpointEnumerator(generators.EndpointEnumerator):
    """Lists each method of a path served by ``routing.Operations`` with the view class serving it."""

    def should_include_endpoint(self, path: str, callback: Any) -> bool:
        views = callback.handlers.values() if isinstance(callback, Operations) else [callback]
        include = super().should_include_endpoint
        return all(include(path, view) for view in views)

    def get_allowed_methods(self, callback: Any) -> list[str]:
        if isinstance(callback, Operations):
            return list(callback.handlers)
        return list(super().get_allowed_methods(callback))

    def get_api_endpoints(self, patterns: Any = None, prefix: str = "") -> list[Any]:
        # (path, path regex, method, callback): drf-spectacular's four, where DRF's stubs say three.
        return [
            (path, regex, method, callback.handlers[method] if isinstance(callback, Operations) else callback)
            for path, regex, method, callback in super().get_api_endpoints(patterns, prefix)
        ]


class SchemaGenerator(generators.SchemaGenerator):
    """SPECTACULAR_SETTINGS["DEFAULT_GENERATOR_CLASS"]."""

    endpoint_inspector_cls = EndpointEnumerator


# status → (component name, when it happens)
_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "`validation_error` (see `fields`) or `invalid_request` (malformed JSON, query or header)."),
    401: ("Unauthenticated", "`unauthenticated`, `invalid_api_key`, `revoked_api_key` or `expired_api_key`."),
    402: ("PaymentRequired", "`payment_required`: prepaid balance or monthly spend cap reached."),
    404: ("NotFound", "`not_found`: unknown id, or another organization's."),
    406: ("NotAcceptable", "`not_acceptable`: the API answers only `application/json`."),
    409: ("Conflict", "`idempotency_conflict` or `conflict`."),
    413: ("PayloadTooLarge", "`payload_too_large`: the body is larger than `API_MAX_BODY_BYTES`."),
    415: ("UnsupportedMediaType", "`unsupported_media_type`: send `application/json` in UTF-8."),
    429: ("TooManyRequests", "`rate_limited` or `concurrency_limit`; retry after `Retry-After` seconds."),
    500: ("InternalError", "`internal_error`: a bug on our side; quote `request_id`."),
    502: ("UpstreamError", "`upstream_error`: a service we depend on failed."),
    503: ("ServiceUnavailable", "`capacity_exhausted` or `service_unavailable`; retry after `Retry-After` seconds."),
}
_RETRY_AFTER = {429, 503}

# What an operation's own service can refuse with, beyond what every operation can answer.
_OPERATION_ERRORS: dict[str, set[int]] = {
    "voice_sessions_create": {402, 409},
    "billing_checkout": {409, 502},
    "webhooks_redeliver": {409},
    # Its body is read raw (request=None in its schema), still bounded.
    "billing_stripe_webhook": {413},
}


def _envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Every API error has this shape.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "fields", "request_id"],
                "properties": {
                    "code": {"type": "string", "enum": [str(code) for code in ErrorCode]},
                    "message": {"type": "string"},
                    "fields": {
                        "type": "object",
                        "description": "Problems per field (query parameter, header or body field).",
                        "additionalProperties": {},
                    },
                    "request_id": {"type": "string", "description": "Also in the `X-Request-ID` header."},
                },
            }
        },
    }


def _response(status: int) -> dict[str, Any]:
    _, description = _RESPONSES[status]
    headers: dict[str, Any] = {
        "X-Request-ID": {"required": True, "schema": {"type": "string"}, "description": "The error's `request_id`."}
    }
    if status in _RETRY_AFTER:
        headers["Retry-After"] = {
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
            "description": "Seconds to wait before retrying.",
        }
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ENVELOPE}"}}},
    }


def _throttled_operations(generator: Any) -> set[tuple[str, str]]:
    """(path, method) of the operations behind a rate limit: all but those whose view opts out."""
    throttled = set()
    for path, _regex, method, callback in getattr(generator, "endpoints", None) or []:
        view_class = getattr(callback, "cls", None)
        if view_class is None or view_class().get_throttles():
            throttled.add((path, method.lower()))
    return throttled


def _statuses(operation: dict[str, Any], *, throttled: bool) -> set[int]:
    statuses = {400, 406, 500, 503}
    if any(requirement for requirement in operation.get("security", [])):
        statuses.add(401)
    if throttled:
        statuses.add(429)
    if "requestBody" in operation:
        statuses |= {413, 415}
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
        statuses.add(404)
    return statuses | _OPERATION_ERRORS.get(operation.get("operationId", ""), set())


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: the envelope component and each operation's error responses."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})[ENVELOPE] = _envelope_schema()
    shared = components.setdefault("responses", {})
    throttled = _throttled_operations(generator)
    for path, path_item in result.get("paths", {}).items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status in sorted(_statuses(operation, throttled=(path, method) in throttled)):
                name = _RESPONSES[status][0]
                shared.setdefault(name, _response(status))
                operation["responses"].setdefault(str(status), {"$ref": f"#/components/responses/{name}"})
    return result
