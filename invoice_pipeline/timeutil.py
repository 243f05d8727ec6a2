"""Parsing of the time formats the sources use, always to aware UTC datetimes."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
# 7-digit fractions (.NET) and other lengths are cut to microseconds before fromisoformat.
_FRACTION = re.compile(r"\.(\d+)")


def parse_duration(value: str | int | float) -> timedelta:
    """'10m', '30s', '2h', '1d', '500ms' or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 2h, 1d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _microseconds(m: re.Match[str]) -> str:
    return "." + (m.group(1) + "000000")[:6]


def parse_timestamp(value: str, naive_tz: str | ZoneInfo = "UTC") -> datetime:
    """ISO-8601 with any fraction length and 'Z' or an offset; a naive value is read in naive_tz."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text:  # _FRACTION cannot match otherwise; most timestamps have no fraction
        text = _FRACTION.sub(_microseconds, text, count=1)
    parsed = datetime.fromisoformat(text)
    tz = parsed.tzinfo
    if tz is UTC:  # "+00:00" parses to the UTC singleton, which astimezone(UTC) returns unchanged
        return parsed
    if tz is None:
        tz = naive_tz if isinstance(naive_tz, ZoneInfo) else ZoneInfo(naive_tz)
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def wall_time_readings(value: str, naive_tz: str | ZoneInfo = "UTC") -> tuple[datetime, ...]:
    """Every UTC instant a timestamp may denote: one, or two for a naive local time the zone's
    clock passes twice (the repeated hour when DST ends) or skips (the hour lost when it starts).

    The first reading is always parse_timestamp's (PEP 495 fold=0: the earlier wall-clock offset),
    so a caller can store that one and still test the second against a window."""
    first = parse_timestamp(value, naive_tz)
    text = value.strip()
    if "." in text:
        text = _FRACTION.sub(_microseconds, text, count=1)
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        return (first,)
    if naive.tzinfo is not None:
        return (first,)
    tz = naive_tz if isinstance(naive_tz, ZoneInfo) else ZoneInfo(naive_tz)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return (first,) if second == first else (first, second)


def parse_date(value: str, fmt: str | None = None) -> date:
    """An ISO date (or the date part of an ISO timestamp), or a date in the given strptime format."""
    if fmt:
        return datetime.strptime(value.strip(), fmt).date()
    return date.fromisoformat(value.strip()[:10])


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(ts: datetime) -> str:
    """'2025-01-31T23:59:59Z' style, second precision."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
