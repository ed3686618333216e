"""JSON from strangers: one strict reader for the REST API and the legacy WebSocket.

Python's ``json`` accepts what PostgreSQL, psycopg or our own code cannot take later and would
turn into a 500 or a 1011 far from the input: ``NaN``/``Infinity`` and numbers that overflow to
them (``1e400``), NUL characters (PostgreSQL text cannot hold them), lone UTF-16 surrogates
(``"\\ud800"`` cannot be encoded as UTF-8), and nesting deep enough to exhaust the parser's
recursion. ``loads`` refuses each of these at the edge with a message that says which.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Our bodies (a session config with a small metadata object) are a few levels deep.
MAX_DEPTH = 32


class UnsafeJson(ValueError):
    """The text is not JSON we accept; the message is safe to show the client."""


def _reject_constant(name: str) -> Any:
    raise UnsafeJson(f"{name} is not a JSON number.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeJson(f"The number {text[:32]} is out of range.")
    return value


def unstorable(text: str) -> str | None:
    """What in ``text`` PostgreSQL (text or jsonb) cannot hold, or None: the one check for it."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate"
    return None


def _check_text(text: str, where: str) -> None:
    problem = unstorable(text)
    if problem:
        raise UnsafeJson(f"{where} contains {problem}.")


def _check_tree(value: Any, max_depth: int) -> None:
    """Walk the parsed value iteratively (no recursion to exhaust): depth and every string."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, "A string")
        elif isinstance(node, dict | list):
            if depth > max_depth:
                raise UnsafeJson(f"The JSON is nested more than {max_depth} levels deep.")
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_text(key, "An object key")
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` or raise ``UnsafeJson`` (a ``ValueError``) saying what is wrong with it."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as error:
        raise UnsafeJson(f"The body is not valid UTF-8 (byte {error.start}).") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnsafeJson:
        raise
    except RecursionError:
        raise UnsafeJson(f"The JSON is nested more than {max_depth} levels deep.") from None
    except ValueError as error:
        # JSONDecodeError, and int() refusing more than sys.get_int_max_str_digits() digits.
        raise UnsafeJson(f"Invalid JSON: {error}") from None
    _check_tree(value, max_depth)
    return value
