from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callmissed import jsonsafe
from callmissed.jsonsafe import UnsafeJson


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1e400}', "out of range"),
        ('{"a": "x\\u0000y"}', "NUL"),
        ('{"a\\u0000": 1}', "NUL"),
        ('{"a": "\\ud800"}', "surrogate"),
        ('{"\\udfff": 1}', "surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nested"),
        ("1" * 5000, "Invalid JSON"),
        ('{"a": 1', "Invalid JSON"),
        (b'{"a": "\xff"}', "UTF-8"),
    ],
)
def test_what_postgres_or_the_parser_cannot_take_is_refused_with_a_reason(text: str | bytes, says: str) -> None:
    with pytest.raises(UnsafeJson, match=says):
        jsonsafe.loads(text)


def test_ordinary_json_reads_as_json_does() -> None:
    text = '{"voice": "shubh", "metadata": {"k": [1, 2.5, true, null, "नमस्ते"]}, "n": -3e10}'
    assert jsonsafe.loads(text.encode()) == json.loads(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_any_json_value_is_either_read_back_exactly_or_refused_with_unsafe_json(value: object) -> None:
    text = json.dumps(value)
    try:
        assert jsonsafe.loads(text) == value
    except UnsafeJson:
        # Only strings with NUL or surrogates, and values nested deeper than the limit, are refused.
        assert "\\u0000" in text or "\\ud" in text or text.count("[") + text.count("{") > jsonsafe.MAX_DEPTH
