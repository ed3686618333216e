from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_voices_are_public_and_complete() -> None:
    voices = APIClient().get("/v1/catalog/voices").json()
    assert len(voices) == 39
    assert [v["id"] for v in voices if v["default"]] == ["shubh"]


def test_languages_say_which_have_voices() -> None:
    languages = APIClient().get("/v1/catalog/languages").json()
    assert len(languages) == 23
    assert all(lang["stt"] for lang in languages)
    assert sum(lang["tts"] for lang in languages) == 11
    assert {"code": "as-IN", "name": "Assamese", "stt": True, "tts": False} in languages


def test_models_carry_status() -> None:
    models = {m["id"]: m for m in APIClient().get("/v1/catalog/models").json()}
    assert models["kimi-k2.5"]["status"] == "available" and models["kimi-k2.5"]["default"]
    assert models["kimi-k2.5-fast"]["status"] == "maintenance"
    assert "maintenance" in models["kimi-k2.5-fast"]["message"]
    assert models["sarvam-105b"]["provider"] == "sarvam"
