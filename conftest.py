"""Fixtures shared by every app's tests: organizations with keys, an authenticated API client,
and the loopback LiveKit server API."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from testsupport.fakes.livekit_server import FakeLiveKitServer


class KeyClient(APIClient):
    """An API client that sends one organization's ``cm_…`` key; ``.key``/``.org`` say whose."""

    def __init__(self, plaintext: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plaintext = plaintext
        self.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")


@pytest.fixture(autouse=True)
def _api_key_cache_cleared() -> None:
    """Keys a test cached must not answer in the next (its rows are rolled back)."""
    key_cache = sys.modules.get("accounts.key_cache")  # not imported by tests that never authenticate
    if key_cache is not None:
        key_cache.clear()


@pytest.fixture
def make_client(db: None) -> Any:
    from accounts.tests.factories import make_key, make_org

    def _make(org_name: str | None = None) -> KeyClient:
        org = make_org(name=org_name) if org_name else make_org()
        created = make_key(org)
        client = KeyClient(created.plaintext)
        client.org = org  # type: ignore[attr-defined]
        client.key = created.api_key  # type: ignore[attr-defined]
        return client

    return _make


@pytest.fixture
def api(make_client: Any) -> KeyClient:
    return make_client()


@pytest.fixture(scope="session")
def livekit_fake_server() -> Iterator[FakeLiveKitServer]:
    """One fake LiveKit server for the run; ``livekit_server`` resets it for each test."""
    from django.conf import settings

    server = FakeLiveKitServer(api_key=settings.LIVEKIT_API_KEY, api_secret=settings.LIVEKIT_API_SECRET).start()
    yield server
    server.stop()


@pytest.fixture
def livekit_server(settings: Any, livekit_fake_server: FakeLiveKitServer) -> FakeLiveKitServer:
    livekit_fake_server.reset()
    settings.LIVEKIT_API_URL = livekit_fake_server.url
    return livekit_fake_server


@pytest.fixture
def seeded_prices(django_db_blocker: Any) -> None:
    """The catalog prices the data migration seeds: transactional tests flush them between tests."""
    import importlib

    from django.apps import apps

    seed = importlib.import_module("billing.migrations.0002_seed_prices").seed
    with django_db_blocker.unblock():
        seed(apps, None)
