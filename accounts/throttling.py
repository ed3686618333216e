from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import ApiKey


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Per-key request rate (``API_RATE_LIMIT``, e.g. "600/min"), counted in the shared cache so
    every server process enforces the same budget."""

    scope = "api_key"

    def get_rate(self) -> str:
        # Read at request time (not class definition) so the limit follows settings changes.
        return str(settings.API_RATE_LIMIT)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if isinstance(request.auth, ApiKey):
            return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
