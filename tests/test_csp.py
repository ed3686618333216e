"""Every response carries the Content-Security-Policy; inline blocks run only with the request's nonce."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

NONCE = re.compile(r"'nonce-([A-Za-z0-9_-]+)'")
# Handlers and style attributes, and script or style blocks that neither load a file nor carry the nonce.
INLINE = re.compile(r"\s(on[a-z]+|style)=\"|<script(?![^>]*\b(src|nonce)=)|<style(?![^>]*nonce=)")


def _directives(response: Any) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


@pytest.mark.parametrize("path", ["/login/", "/signup/", "/admin/login/", "/v1/docs", "/v1/redoc", "/no-such-page/"])
def test_every_html_page_is_served_under_a_strict_policy(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (200, 404)
    policy = _directives(response)
    assert policy["default-src"] == "'self'"
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'self'"
    assert policy["form-action"].startswith("'self'")


def test_the_api_error_envelope_carries_the_policy_too(api: Any) -> None:
    response = api.get("/v1/voice/sessions/not-a-uuid")
    assert response.status_code == 404
    assert "default-src 'self'" in response["Content-Security-Policy"]


def test_inline_scripts_carry_this_requests_nonce_and_no_other(client: Client) -> None:
    first, second = client.get("/v1/docs"), client.get("/v1/docs")
    nonces = [NONCE.search(r["Content-Security-Policy"]).group(1) for r in (first, second)]  # type: ignore[union-attr]
    assert nonces[0] != nonces[1]
    page = first.content.decode()
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", page)
    assert inline and all(f'nonce="{nonces[0]}"' in attributes for attributes in inline)


def test_dashboard_templates_have_no_inline_handlers_or_styles() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "templates"
    offending = [
        f"{path.relative_to(root)}: {match.group(0)}"
        for path in root.rglob("*.html")
        for match in re.finditer(
            r"\s(on[a-z]+|style)=\"|<script(?![^>]*\b(src|nonce)=)|<style(?![^>]*nonce=)", path.read_text()
        )
    ]
    assert offending == []


def test_debug_error_pages_report_instead_of_blocking(client: Client, settings: Any) -> None:
    settings.DEBUG = True
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "Content-Security-Policy" not in response
    assert "default-src 'self'" in response["Content-Security-Policy-Report-Only"]
    assert "Content-Security-Policy" in client.get("/login/")
