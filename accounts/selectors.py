from __future__ import annotations

from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from accounts.keys import hash_key, looks_like_key
from accounts.models import ApiKey, Membership, Organization
from callmissed.errors import ApplicationError, ErrorCode, NotFound


class InvalidApiKey(ApplicationError):
    code = ErrorCode.INVALID_API_KEY
    status_code = 401
    default_message = "Invalid API key."


class RevokedApiKey(InvalidApiKey):
    code = ErrorCode.REVOKED_API_KEY
    default_message = "This API key has been revoked."


class ExpiredApiKey(InvalidApiKey):
    code = ErrorCode.EXPIRED_API_KEY
    default_message = "This API key has expired."


def api_key_authenticate(*, plaintext: str, now: datetime | None = None) -> ApiKey:
    """The live key for a plaintext secret; raises a typed 401 error for every other case."""
    if not looks_like_key(plaintext):
        raise InvalidApiKey()
    try:
        key = ApiKey.objects.select_related("organization").get(hashed_secret=hash_key(plaintext))
    except ApiKey.DoesNotExist:
        raise InvalidApiKey() from None
    api_key_check_usable(api_key=key, now=now)
    return key


def api_key_check_usable(*, api_key: ApiKey, now: datetime | None = None) -> None:
    """Raise the key's 401 when it is revoked or expired (at its ``expires_at`` exactly)."""
    if api_key.revoked_at is not None:
        raise RevokedApiKey()
    if api_key.expires_at is not None and api_key.expires_at <= (now or timezone.now()):
        raise ExpiredApiKey()


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).order_by("-created_at")


def organization_for_user(*, user: AbstractBaseUser | AnonymousUser) -> Organization | None:
    """The organization a dashboard user acts for: their oldest membership (one per user today)."""
    if not user.is_authenticated:
        return None
    membership = (
        Membership.objects.select_related("organization").filter(user_id=user.pk).order_by("created_at", "id").first()
    )
    return membership.organization if membership else None


def is_owner(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> bool:
    """Whether the user may change the organization's money settings (its spend cap)."""
    return (
        user.is_authenticated
        and Membership.objects.filter(user_id=user.pk, organization=organization, role=Membership.Role.OWNER).exists()
    )


def api_key_get(*, organization: Organization, key_id: str) -> ApiKey:
    """One of the organization's keys; another organization's key is simply not found."""
    try:
        return ApiKey.objects.get(organization=organization, pk=key_id)
    except (ApiKey.DoesNotExist, ValueError, ValidationError):
        raise NotFound("API key not found.") from None
