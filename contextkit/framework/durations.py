"""Durations for windows, ttls and schedules: ``timedelta`` or strings like ``"30m"``, ``"7d"``.

Specs store whole seconds; feature names use the shortest exact unit (``amount_sum_7d``).
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")


def to_seconds(value: timedelta | str | int, *, what: str) -> int:
    """Turn ``timedelta(days=7)``, ``"7d"`` or ``604800`` into whole seconds (> 0)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise ValueError(f"{what} must be a whole number of seconds, got {value!r}")
        seconds = int(seconds)
    elif isinstance(value, bool):
        raise ValueError(f"{what} must be a timedelta or a string like '7d', got {value!r}")
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(
                f"{what} {value!r} is not a duration; use a timedelta or a string such as "
                "'30m', '1h', '7d', '2w' or '1y'"
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{what} must be a timedelta or a string like '7d', got {value!r}")
    if seconds <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


def format_seconds(seconds: int) -> str:
    """Shortest exact name of a duration: 3600 -> ``"1h"``, 604800 -> ``"7d"``, 90 -> ``"90s"``."""
    for unit in ("y", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
