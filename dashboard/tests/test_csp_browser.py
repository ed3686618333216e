"""The Content-Security-Policy as Chromium enforces it: every page we serve renders with no violation."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from dashboard.tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long and unguessable passphrase"
# Runs before any page script, outside the page's policy: every violation lands in a list.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = e.sourceFile + ":" + e.lineNumber;
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + where);
});
"""


class Browser:
    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        self.expected_errors: set[str] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _console(self, message: Any) -> None:
        url = message.location.get("url", "")
        if url in self.expected_errors or url.endswith("/favicon.ico"):  # a 404 we asked for; no icon
            return
        if message.type == "error" or "Content Security Policy" in message.text:
            self.problems.append(f"console {message.type}: {message.text} at {message.location.get('url')}")

    def refuse_outside(self, route: Any) -> None:
        self.problems.append(f"request outside the server: {route.request.url}")
        route.abort()

    def visit(self, url: str, *, status: int = 200) -> Any:
        if status >= 400:
            self.expected_errors.add(url)
        response = self.page.goto(url)
        assert response.status == status, url
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        return response

    def assert_clean(self, *, blocked: tuple[str, ...] = ()) -> None:
        """No violation but the ``blocked`` URLs the policy is meant to keep out, and no request
        outside the server."""
        violations = [v for v in self.page.evaluate("window.__cspViolations") if v.split(" ")[1] not in blocked]
        assert violations == [], violations
        problems = [p for p in self.problems if not any(f"'{url}' violates" in p for url in blocked)]
        assert problems == [], problems


@contextlib.contextmanager
def browsing(monkeypatch: pytest.MonkeyPatch, **context_options: Any) -> Iterator[Browser]:
    """A page in Debian's headless Chromium that records policy violations and refuses, and reports,
    any request beyond the server; ``context_options`` go to Playwright's ``new_context``."""
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = chromium.new_context(**context_options)
        context.add_init_script(RECORD_VIOLATIONS)
        page = Browser(context.new_page())
        # Pages render with no network beyond the server: anything else the browser asks for is
        # recorded and refused.
        context.route(re.compile(r"^(?!http://(localhost|127\.0\.0\.1)[:/])"), page.refuse_outside)
        yield page
        context.close()
        chromium.close()


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    with browsing(monkeypatch) as page:
        yield page


def _log_in(browser: Browser, base: str, username: str) -> None:
    browser.visit(f"{base}/login/")
    browser.page.fill("#id_username", username)
    browser.page.fill("#id_password", PASSWORD)
    browser.page.click("button[type=submit]")
    browser.page.wait_for_url(f"{base}/dashboard/")


def test_the_dashboard_pages_render_under_the_policy(browser: Browser, live_server: Any) -> None:
    base = live_server.url
    page = browser.page
    browser.visit(f"{base}/signup/")
    sign_up(page, base, username="kavya", organization="Kavya Voice", password=PASSWORD)
    browser.assert_clean()

    page.fill("#id_name", "csp")
    page.click("text=Create key")
    assert page.inner_text("[data-testid=new-key]").startswith("cm_")
    # The revoke confirmation moved from an inline handler to dashboard.js: it must still ask, and a
    # dismissed question must keep the key.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("button:has-text('Revoke')")
    assert page.locator("button:has-text('Revoke')").count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Revoke')")
    page.wait_for_selector(".flash")

    for path in ("/dashboard/", "/dashboard/sessions/", "/dashboard/billing/"):
        browser.visit(base + path)
    browser.visit(f"{base}/dashboard/sessions/{uuid.uuid4()}/", status=404)  # the error page

    browser.visit(f"{base}/dashboard/webhooks/")
    page.fill("#id_url", "https://hooks.example.com/csp")
    page.click("text=Add endpoint")
    assert page.inner_text("[data-testid=webhook-secret]").startswith("whsec_")
    page.click("text=hooks.example.com/csp")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Rotate secret')")
    assert page.inner_text("[data-testid=webhook-secret]").startswith("whsec_")
    browser.assert_clean()


def test_swagger_ui_and_redoc_render_under_the_policy(browser: Browser, live_server: Any) -> None:
    base = live_server.url
    browser.visit(f"{base}/v1/docs")
    # The operations came from /v1/schema through the nonce'd initialisation script.
    browser.page.locator(".opblock-summary-path", has_text="/v1/voice/sessions").first.wait_for(state="visible")
    browser.assert_clean()

    browser.visit(f"{base}/v1/redoc")
    browser.page.locator("h1", has_text="CallMissed API").wait_for(state="visible")
    browser.page.get_by_role("menuitem").first.wait_for(state="visible")
    # Redocly's logo is the one thing the page would fetch from elsewhere; the policy refuses it and
    # the page hides the broken image.
    browser.page.wait_for_function("window.__cspViolations.length > 0")
    assert browser.page.locator("img[alt='redocly logo']").count() == 0
    browser.assert_clean(blocked=("https://cdn.redoc.ly/redoc/logo-mini.svg",))


def test_the_admin_renders_under_the_policy(browser: Browser, live_server: Any) -> None:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    base = live_server.url
    browser.visit(f"{base}/admin/login/")
    browser.page.fill("#id_username", "root")
    browser.page.fill("#id_password", PASSWORD)
    browser.page.click("input[type=submit]")
    browser.page.wait_for_url(f"{base}/admin/")
    for path in ("/admin/accounts/organization/", "/admin/accounts/auditlog/", "/admin/billing/ledgerentry/"):
        browser.visit(base + path)
    browser.assert_clean()
