"""The rate syntax of every throttle setting: ``"10/min"``, ``"5/15min"``, ``"5/hour"``, ``"2/day"``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True)
class Rate:
    limit: int
    window_seconds: int


def parse_rate(value: str, *, setting: str = "rate") -> Rate:
    """``"10/min"``, ``"5/15min"``, ``"5/hour"``, ``"2/day"``; a bad value raises at start-up."""
    match = _RATE.match(value.lower())
    if not match or match.group(3) not in _UNITS or int(match.group(1)) < 1:
        raise ImproperlyConfigured(f"{setting} must look like '10/min' or '5/15min', got {value!r}")
    multiple = int(match.group(2) or 1)
    return Rate(limit=int(match.group(1)), window_seconds=max(1, multiple) * _UNITS[match.group(3)])
