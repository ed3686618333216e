"""The legacy socket's written protocol and its code agree: the close-code table of
docs/legacy-websocket.md is ``CloseCode``, and the config reader names the field holding JSON it
refuses."""

from __future__ import annotations

import re

import pytest

from voice.legacy.protocol import MAX_TEXT_MESSAGE_BYTES, CloseCode, unsafe_config_fields
from voice.tests.ws_support import ROOT

DOC = ROOT / "docs" / "legacy-websocket.md"


def documented_close_codes() -> dict[int, set[str]]:
    """Each close code of the doc's table, with the ``error.code``s it lists."""
    section = DOC.read_text().split("## Errors and close codes", 1)[1].split("\n## ", 1)[0]
    table: dict[int, set[str]] = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d{4})\s*\|([^|]*)\|", line)
        if row:
            table[int(row.group(1))] = set(re.findall(r"`([a-z_]+)`", row.group(2)))
    return table


def test_the_close_code_table_is_the_close_code_enum() -> None:
    assert set(documented_close_codes()) == {int(code) for code in CloseCode}


def test_the_documented_text_limit_is_the_one_enforced() -> None:
    assert f"at most **{MAX_TEXT_MESSAGE_BYTES // 1024} KiB**" in DOC.read_text()


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ('{"type": "config", "sample_rate": 1e400}', {"sample_rate": ["The number 1e400 is out of range."]}),
        ('{"type": "config", "metadata": {"a": NaN}}', {"metadata": ["The number NaN is out of range."]}),
        ('{"type": "config", "metadata": {"a": "x\\u0000"}}', {"metadata": ["A string contains a NUL character."]}),
        (
            '{"type": "config", "metadata": {"\\udc80": 1}}',
            {"metadata": ["An object key contains a lone UTF-16 surrogate."]},
        ),
        (
            '{"type": "config", "voice": "shubh", "metadata": ' + "[" * 40 + "]" * 40 + "}",
            {"metadata": ["The JSON is nested more than 32 levels deep."]},
        ),
    ],
    ids=["overflowing-number", "nan", "nul", "surrogate-key", "deep"],
)
def test_a_refused_value_in_a_config_is_pinned_on_its_field(text: str, fields: dict[str, list[str]]) -> None:
    assert unsafe_config_fields(text) == fields


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "config", "\\u0000": 1}',  # a field name that cannot be sent back
        '{"type": "end", "x": NaN}',  # not a config
        "[" * 5000 + "]" * 5000,  # too deep to read at all
        '{"type": "config", "max_duration_seconds": ' + "9" * 5000 + "}",  # too many digits to read
    ],
    ids=["nul-field-name", "not-a-config", "unreadable", "huge-integer"],
)
def test_what_cannot_be_pinned_on_a_field_is_not(text: str) -> None:
    assert unsafe_config_fields(text) == {}
