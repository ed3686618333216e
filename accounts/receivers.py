"""Every change of an API key after it is created reaches the processes' key caches once it
commits: a revocation (``api_key_revoke``), an expiry edited in the admin, a deletion (an
organization's included)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts import key_cache
from accounts.models import ApiKey


@receiver(post_save, sender=ApiKey, dispatch_uid="accounts.key_cache_on_save")
def _key_saved(sender: Any, created: bool, **kwargs: Any) -> None:
    # Recording a key's last use is a queryset update (no signal), so every save here matters.
    if not created:
        _changed()


def _changed() -> None:
    # Now as well as at commit: this process's next request reads the key again even inside the
    # changing transaction; the commit then reaches the other processes (and drops anything a
    # request of this one loaded meanwhile).
    key_cache.clear()
    transaction.on_commit(key_cache.api_keys_changed, robust=True)


@receiver(post_delete, sender=ApiKey, dispatch_uid="accounts.key_cache_on_delete")
def _key_deleted(sender: Any, **kwargs: Any) -> None:
    _changed()
