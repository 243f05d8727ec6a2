"""Exact conversion of source values to Decimal and dates; anything doubtful is a MappingError."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from invoice_pipeline.model import MONEY_T, QTY_T, RATE_T
from invoice_pipeline.timeutil import parse_date, parse_timestamp


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a dict key per column kind
class Scale:
    """A warehouse DECIMAL column kind: its decimal places and the magnitude it must stay below.

    Quantities and rates share their places but not their range, so the places alone cannot say
    which limit applies (they once did, and capped quantities at 10^6 instead of 10^12).
    """

    places: Decimal
    limit: Decimal

    @classmethod
    def of(cls, sql_type: str) -> Scale:
        """The kind of a DECIMAL(p,s) column: s places, magnitude below 10^(p-s)."""
        precision, scale = (int(x) for x in sql_type.removeprefix("DECIMAL(").removesuffix(")").split(","))
        return cls(Decimal(1).scaleb(-scale), Decimal(10) ** (precision - scale))


# One definition of each column type (model.py); the scales follow it.
MONEY = Scale.of(MONEY_T)
QUANTITY = Scale.of(QTY_T)
RATE = Scale.of(RATE_T)


class MappingError(ValueError):
    """A record that cannot be mapped: it is quarantined with this message as its reason."""


# Successful conversions of JSON strings and floats, per scale: the same amounts recur across a
# batch ("0", "1", common prices), and Decimal parsing plus the range checks and quantize() cost
# far more than a dict lookup. Decimals are immutable, so sharing one object is safe; the result
# depends only on the text and the scale (quantize() uses the default context's precision, which
# the pipeline never changes). Bounded: cleared when full.
_CACHE_LIMIT = 20_000  # entries per cache, about 190 bytes each: at most ~4 MB per scale
_CACHES: dict[Scale, dict[str, Decimal]] = {scale: {} for scale in (MONEY, QUANTITY, RATE)}


def to_decimal(value: Any, field: str, scale: Scale = MONEY, *, required: bool = False) -> Decimal | None:
    """JSON string or number to Decimal, rounded half-even to the scale's places.

    Floats go through repr() (the shortest string that round-trips), so JSON 1041.7 stays
    1041.7 and CRM.COM's float noise (0.30000000000000004) rounds away at 4 decimals. A value too
    large for its warehouse column is the record's error (quarantine), never the batch's.
    """
    cls = type(value)  # exact types first: this runs for every amount of every record
    if cls is str:
        text = value
    elif cls is float:
        text = repr(value)  # what _convert parses, so a float and its repr() share an entry
    elif value is None and not required:
        return None
    else:
        return _convert(value, field, scale, required)
    cache = _CACHES.get(scale)
    if cache is None:
        return _convert(value, field, scale, required)
    dec = cache.get(text)
    if dec is None:
        dec = _convert(value, field, scale, required)  # raises for what is not an amount
        if dec is not None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[text] = dec
    return dec


def _plain_number_text(value: str) -> bool:
    """Decimal() and int() also read "1_0" as 10 and non-ASCII digits ("١٢" as 12): an amount
    written like that is doubtful, so it is the record's error, never reinterpreted."""
    return value.isascii() and "_" not in value


def _convert(value: Any, field: str, scale: Scale, required: bool) -> Decimal | None:
    cls = type(value)
    try:
        if cls is str and value:
            if not _plain_number_text(value):
                raise MappingError(f"{field}: not a number: {value!r}")
            dec = Decimal(value)  # surrounding whitespace is ignored
        elif cls is Decimal:  # a JSON number too precise for a float (see jsonio): exact as sent
            dec = value
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
    limit = scale.limit
    if abs(dec) < limit:
        dec = dec.quantize(scale.places, ROUND_HALF_EVEN)  # positional: the keyword costs twice the call
        if abs(dec) < limit:  # rounding can reach the limit
            return dec
    raise MappingError(f"{field}: {value!r} is too large for its column (at most {limit - scale.places} allowed)")


INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # the warehouse's INTEGER (line and installment numbers)


def to_int(value: Any, field: str) -> int | None:
    """Text or number to an INTEGER; out of its range is the record's error, not the batch's."""
    if type(value) is str and value:  # the usual JSON text: straight to int()
        try:
            if not _plain_number_text(value):
                raise ValueError
            number = int(value)
        except ValueError:
            raise MappingError(f"{field}: not an integer: {value!r}") from None
    elif value is None or value == "":
        return None
    else:
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, Decimal) and not (value.is_finite() and value == value.to_integral_value()):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise MappingError(f"{field}: not an integer: {value!r}") from None
    if INT_MIN <= number <= INT_MAX:
        return number
    raise MappingError(f"{field}: {value!r} is too large for its column (INTEGER)")


# Dates parsed from text, by (text, format): an invoice batch has few distinct dates, and parsing
# (strptime above all) costs far more than the lookup. Dates are immutable. Cleared when full.
_DATES: dict[tuple[str, str | None], date] = {}


def to_date(value: Any, field: str, fmt: str | None = None) -> date | None:
    if type(value) is str:
        if not value:
            return None
        key = (value, fmt)
        parsed = _DATES.get(key)
        if parsed is None:
            try:
                parsed = parse_date(value, fmt)
            except ValueError:
                raise MappingError(f"{field}: not a valid date: {value!r}") from None
            if len(_DATES) >= _CACHE_LIMIT:
                _DATES.clear()
            _DATES[key] = parsed
        return parsed
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
    if type(value) is str:  # most ids and codes: str(value) would return it as it is
        return value
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
