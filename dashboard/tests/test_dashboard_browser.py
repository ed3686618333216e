"""The dashboard as a customer meets it: headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def _api(base: str, path: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_sign_up_create_a_key_use_it_and_revoke_it(page: Any, live_server: Any) -> None:
    base = live_server.url
    page.goto(f"{base}/signup/")
    page.fill("#id_username", "meera")
    page.fill("#id_email", "meera@example.com")
    page.fill("#id_organization_name", "Meera Voice")
    page.fill("#id_password1", "a long and unguessable passphrase")
    page.fill("#id_password2", "a long and unguessable passphrase")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard/keys/")

    page.fill("#id_name", "browser test")
    page.click("text=Create key")
    plaintext = page.inner_text("[data-testid=new-key]").strip()
    assert plaintext.startswith("cm_")

    status, created = _api(base, "/v1/voice/sessions", plaintext, {"language": "hi-IN", "voice": "priya"})
    assert status == 201, created

    page.click("text=Sessions")
    row = page.locator("table tbody tr").first
    assert created["id"][:8] in row.inner_text()
    row.locator("a").click()
    assert "hi-IN" in page.inner_text("[data-testid=config]")

    page.click("text=API keys")
    assert plaintext not in page.content()  # shown once, never again
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Revoke')")
    page.wait_for_selector(".flash")
    assert "revoked" in page.inner_text(".flash")

    status, body = _api(base, "/v1/voice/sessions", plaintext)
    assert status == 401 and body["error"]["code"] == "revoked_api_key"
