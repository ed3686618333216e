from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import ApiKey
from callmissed import ratelimit


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Per-key request rate (``API_RATE_LIMIT``, e.g. "600/min"), counted in the shared cache so
    every server process enforces the same budget.

    A fixed window counted with one atomic increment per request (``callmissed.ratelimit``):
    DRF's own history list is read, then written, so concurrent requests overshoot the limit.
    When the cache is down the request is let through (and the outage logged once a minute): the
    rate limit protects the API, it must not take it down."""

    scope = "api_key"

    def get_rate(self) -> str:
        # Read at request time (not class definition) so the limit follows settings changes.
        return str(settings.API_RATE_LIMIT)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if isinstance(request.auth, ApiKey):
            return f"key-{request.auth.pk}"
        # The project's one notion of the client's address (CLIENT_IP_HEADER, not DRF's get_ident,
        # which believes any X-Forwarded-For a client sends).
        return f"ip-{ratelimit.client_ip(request._request)}"

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        # The project's rate syntax ("5/15min" too), as for every other limit; DRF reads one letter.
        if rate is None:
            return None, None
        parsed = ratelimit.parse_rate(rate, setting="API_RATE_LIMIT")
        return parsed.limit, parsed.window_seconds

    def allow_request(self, request: Request, view: Any) -> bool:
        limit, window = self.parse_rate(self.rate)
        ident = self.get_cache_key(request, view)
        if ident is None or limit is None or window is None:
            return True
        rate = ratelimit.Rate(limit=limit, window_seconds=window)
        decision = ratelimit.hit(self.scope, ident, rate, now=self.timer())
        self._retry_after = decision.retry_after
        return decision.allowed

    def wait(self) -> float | None:
        return getattr(self, "_retry_after", None)
