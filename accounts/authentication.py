"""DRF authentication for ``Authorization: Bearer cm_…``.

``request.user`` is the ``ApiKey``'s organization principal and ``request.auth`` the key, so
views scope every lookup to ``request.auth.organization``.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.key_cache import api_key_authenticate_cached
from accounts.models import ApiKey
from accounts.selectors import InvalidApiKey
from accounts.services import api_key_touch
from agent_worker import logs


class ApiKeyPrincipal:
    """What DRF sees as ``request.user`` for a key-authenticated request."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.organization = api_key.organization

    def __str__(self) -> str:
        return f"api_key:{self.api_key.prefix}"


class KeyAuthFailed(exceptions.AuthenticationFailed):
    def __init__(self, error: InvalidApiKey) -> None:
        super().__init__(error.message)
        self.callmissed_code = error.code


class ApiKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        try:
            header = get_authorization_header(request).split()
        except UnicodeEncodeError:
            # A header value outside Latin-1 (possible from ASGI servers and test clients).
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer cm_…'.") from None
        if not header:
            return None
        if header[0].lower() != self.keyword or len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer cm_…'.")
        try:
            plaintext = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        try:
            key = api_key_authenticate_cached(plaintext=plaintext)
        except InvalidApiKey as error:
            raise KeyAuthFailed(error) from None
        api_key_touch(api_key=key)
        logs.bind(organization_id=str(key.organization_id))  # every later line of this request
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def request_api_key(request: Request) -> ApiKey:
    """The key of a request that passed ``ApiKeyAuthentication`` and ``IsAuthenticated``."""
    assert isinstance(request.auth, ApiKey)
    return request.auth
