"""Parse and format durations ("90s", "5m", "84h", "3.5d", or seconds) and rates ("3600/h")."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|m|h|d)\s*$", re.IGNORECASE)


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration; raises ValueError with the offending text."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a duration: {value!r}")
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 84h, 3.5d)")
    number, unit = match.groups()
    return float(number) * _UNITS[(unit or "s").lower()]


def parse_rate(value: str | int | float) -> float:
    """Events per second in a rate such as "3600/h", "100/m", "5/s" or "20/10m"."""
    if isinstance(value, bool):
        raise ValueError(f"not a rate: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a rate: {value!r}")
        if value < 0:
            raise ValueError(f"negative rate: {value!r}")
        return float(value)
    match = _RATE.match(value)
    if not match:
        raise ValueError(f"not a rate: {value!r} (use e.g. 3600/h, 100/m, 5/s)")
    count, span, unit = match.groups()
    seconds = float(span or 1) * _UNITS[unit.lower()]
    if seconds <= 0:
        raise ValueError(f"not a rate: {value!r}")
    return float(count) / seconds


def format_duration(seconds: float) -> str:
    """A short human form: 45s, 12m, 3.5h, 2d."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def rate_text(rate: float) -> str:
    """A rate for people: "1.67/s", "100/m", "12/h", "unlimited"."""
    if not math.isfinite(rate):
        return "unlimited"
    if rate >= 1:
        return f"{rate:.3g}/s"
    if rate * 60 >= 1:
        return f"{rate * 60:.3g}/m"
    return f"{rate * 3600:.3g}/h"
