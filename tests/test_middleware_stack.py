"""Under ASGI the middleware stack runs in one thread: every crossing between the event loop and a
thread costs CPU on each request, so a request crosses only where Django must adapt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref import sync
from django.conf import settings
from django.test import AsyncClient

pytestmark = pytest.mark.django_db


def test_the_sync_stack_middleware_is_last() -> None:
    assert settings.MIDDLEWARE[-1] == "callmissed.middleware.SyncStackMiddleware"


def test_a_request_crosses_into_threads_a_fixed_few_times(monkeypatch: pytest.MonkeyPatch) -> None:
    crossings: list[str] = []
    original = sync.SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        crossings.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted)

    async def one() -> int:
        return (await AsyncClient().get("/v1/catalog/voices")).status_code

    assert asyncio.run(one()) == 200  # the catalog is public: the whole stack and a DRF view ran
    # What Django's ASGI handler itself does in threads (the request_started signal, the top of
    # the stack, process_view, the view, rendering, closing); with Django's async-capable
    # middleware left async, a request crossed 16 times.
    assert len(crossings) <= 6, crossings
