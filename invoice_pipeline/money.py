"""Exact conversion of source values to Decimal and dates; anything doubtful is a MappingError."""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from invoice_pipeline.timeutil import parse_date, parse_timestamp

MONEY = Decimal("0.0001")  # DECIMAL(18,4)
QUANTITY = Decimal("0.000001")  # DECIMAL(18,6)
RATE = Decimal("0.000001")  # DECIMAL(12,6)


class MappingError(ValueError):
    """A record that cannot be mapped: it is quarantined with this message as its reason."""


# The largest magnitude each scale's warehouse column holds: DECIMAL(18,4), (18,6), (12,6).
_LIMITS = {MONEY: Decimal(10) ** 14, QUANTITY: Decimal(10) ** 12, RATE: Decimal(10) ** 6}
_NO_LIMIT = Decimal(10) ** 20


def to_decimal(value: Any, field: str, places: Decimal = MONEY, *, required: bool = False) -> Decimal | None:
    """JSON string or number to Decimal, rounded half-even to `places`.

    Floats go through repr() (the shortest string that round-trips), so JSON 1041.7 stays
    1041.7 and CRM.COM's float noise (0.30000000000000004) rounds away at 4 decimals. A value too
    large for its warehouse column is the record's error (quarantine), never the batch's.
    """
    cls = value.__class__  # exact types first: this runs for every amount of every record
    try:
        if cls is str and value:
            dec = Decimal(value)  # surrounding whitespace is ignored
        elif cls is float:
            dec = Decimal(repr(value))
        elif cls is int:
            dec = Decimal(value)
        elif value is None or value == "":
            if required:
                raise MappingError(f"{field}: missing amount")
            return None
        else:  # bool, objects, arrays
            raise MappingError(f"{field}: expected a number, got {value!r}")
    except InvalidOperation:
        raise MappingError(f"{field}: not a number: {value!r}") from None
    if not dec.is_finite():
        raise MappingError(f"{field}: not a finite number: {value!r}")
    limit = _LIMITS.get(places, _NO_LIMIT)
    if abs(dec) < limit:
        dec = dec.quantize(places, rounding=ROUND_HALF_EVEN)
        if abs(dec) < limit:  # rounding can reach the limit
            return dec
    raise MappingError(f"{field}: {value!r} is too large for its column (at most {limit - places} allowed)")


def to_int(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise MappingError(f"{field}: not an integer: {value!r}") from None


def to_date(value: Any, field: str, fmt: str | None = None) -> date | None:
    if value is None or value == "":
        return None
    try:
        return parse_date(str(value), fmt)
    except ValueError:
        raise MappingError(f"{field}: not a valid date: {value!r}") from None


def to_timestamp(value: Any, field: str, naive_tz: str = "UTC") -> datetime | None:
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(str(value), naive_tz)
    except ValueError:
        raise MappingError(f"{field}: not a valid timestamp: {value!r}") from None


def to_text(value: Any) -> str | None:
    """Ids and codes are VARCHAR in the warehouse whatever JSON type they came as."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
