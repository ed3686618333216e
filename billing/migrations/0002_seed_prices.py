"""Seed prices from the product catalog (2026-11-24). Every seeded price is unconfirmed with the
provider and stays editable in the admin: change one by adding a row with a later effective date."""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE = datetime(2026, 1, 1, tzinfo=UTC)

# (model, component, currency, unit_price, per_units, source)
PRICES = [
    ("kimi-k2.5", "llm_input_tokens", "USD", "0.52", 1_000_000, "seed document, unconfirmed"),
    ("kimi-k2.5", "llm_output_tokens", "USD", "2.30", 1_000_000, "seed document, unconfirmed"),
    ("sarvam-105b", "llm_input_tokens", "INR", "29.28", 1_000_000, "Sarvam pricing page, unconfirmed"),
    ("sarvam-105b", "llm_output_tokens", "INR", "73.20", 1_000_000, "Sarvam pricing page, unconfirmed"),
    ("moonshotai/kimi-k2.5", "llm_input_tokens", "USD", "0.375", 1_000_000, "OpenRouter models list, unconfirmed"),
    ("moonshotai/kimi-k2.5", "llm_output_tokens", "USD", "2.025", 1_000_000, "OpenRouter models list, unconfirmed"),
    # Any other vendor/model: the default until an admin adds the model's own row.
    ("openrouter/*", "llm_input_tokens", "USD", "0.375", 1_000_000, "OpenRouter default, set by operator"),
    ("openrouter/*", "llm_output_tokens", "USD", "2.025", 1_000_000, "OpenRouter default, set by operator"),
    ("saaras:v3", "stt_seconds", "INR", "30", 3600, "Sarvam pricing page (per second), unconfirmed"),
    ("bulbul:v3", "tts_characters", "INR", "30", 10_000, "Sarvam pricing page, unconfirmed"),
    # The offline providers run on our own CPU: usage is recorded, and free.
    ("offline-pocketsphinx", "stt_seconds", "USD", "0", 3600, "offline provider"),
    ("piper", "tts_characters", "USD", "0", 10_000, "offline provider"),
    ("scripted", "llm_input_tokens", "USD", "0", 1_000_000, "offline provider"),
    ("scripted", "llm_output_tokens", "USD", "0", 1_000_000, "offline provider"),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    ExchangeRate = apps.get_model("billing", "ExchangeRate")
    for model, component, currency, unit_price, per_units, source in PRICES:
        ModelPrice.objects.get_or_create(
            model=model,
            component=component,
            effective_from=EFFECTIVE,
            defaults={
                "currency": currency,
                "unit_price": Decimal(unit_price),
                "per_units": per_units,
                "source": source,
            },
        )
    ExchangeRate.objects.get_or_create(
        currency="INR",
        effective_from=EFFECTIVE,
        defaults={"usd_per_unit": Decimal("0.0112"), "source": "set by operator (about 89 INR per USD); editable"},
    )


def unseed(apps, schema_editor):
    apps.get_model("billing", "ModelPrice").objects.filter(effective_from=EFFECTIVE).delete()
    apps.get_model("billing", "ExchangeRate").objects.filter(effective_from=EFFECTIVE).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_prices_usage_ledger")]
    operations = [migrations.RunPython(seed, unseed)]
