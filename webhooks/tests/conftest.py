"""A customer's loopback receiver the SSRF guard lets through, and the documented verification
snippet loaded from docs/webhooks.md as a customer would paste it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport.fakes.webhook_receiver import WebhookReceiver

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def documented_verifier() -> Callable[..., Any]:
    text = DOCS.read_text()
    block = re.search(r"<!-- verify-snippet:start -->\s*```python\n(.*?)```\s*<!-- verify-snippet:end -->", text, re.S)
    assert block, "docs/webhooks.md lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), str(DOCS), "exec"), namespace)
    verify: Callable[..., Any] = namespace["verify_webhook"]
    return verify


@pytest.fixture
def allow_loopback(settings: Any) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]


@pytest.fixture
def receiver(allow_loopback: None) -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running
