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


def to_decimal(value: Any, field: str, places: Decimal = MONEY, *, required: bool = False) -> Decimal | None:
    """JSON string or number to Decimal, rounded half-even to `places`.

    Floats go through repr() (the shortest string that round-trips), so JSON 1041.7 stays
    1041.7 and CRM.COM's float noise (0.30000000000000004) rounds away at 4 decimals.
    """
    if value is None or value == "":
        if required:
            raise MappingError(f"{field}: missing amount")
        return None
    if isinstance(value, bool):
        raise MappingError(f"{field}: expected a number, got {value!r}")
    try:
        if isinstance(value, float):
            dec = Decimal(repr(value))
        elif isinstance(value, int | str):
            dec = Decimal(str(value).strip())
        else:
            raise InvalidOperation
    except InvalidOperation:
        raise MappingError(f"{field}: not a number: {value!r}") from None
    if not dec.is_finite():
        raise MappingError(f"{field}: not a finite number: {value!r}")
    return dec.quantize(places, rounding=ROUND_HALF_EVEN)


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
