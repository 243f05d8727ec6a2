"""Small helpers the clients share: config key types (a time zone, a currency code), comparing a field
with its stored value, checking list items (a SourceError: the page is wrong). Checks of a record's nested parts (a MappingError: the record is
wrong) are the mappings' and live in sources/mapping_kit.py."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator

from invoice_pipeline.http import HttpClient


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"not a known IANA time zone: {value!r} (e.g. UTC, Europe/Nicosia)") from None
    return value


def _currency_code(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{3}", value):
        raise ValueError(f"not an ISO 4217 currency code: {value!r} (e.g. USD, EUR)")
    return value


# Config key types: a config model declares `timezone: TimeZoneName = "UTC"` and gets the check.
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]  # an IANA zone, e.g. of an API's naive timestamps
CurrencyCode = Annotated[str, AfterValidator(_currency_code)]  # ISO 4217, three capitals


def same_value(read: Any, stored: Any) -> bool:
    """A field read now equals its stored value: amounts as numbers ("1250" == "1250.00"), else as text."""
    if read is None or stored is None:
        return read is None and stored is None
    try:
        return Decimal(str(read)) == Decimal(str(stored))
    except InvalidOperation:
        return str(read) == str(stored)


def compare_stored(lookup: Callable[[Sequence[str], Sequence[str]], dict[str, dict[str, Any]]] | None,
                   keyed: list[tuple[str, dict[str, Any]]], fields: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(id, state) for each (id, fields read now), in order, with one warehouse query for all (the
    source's `stored_fields`): "new" (not stored, or no warehouse to ask: lookup None), "changed" (a
    field differs from the stored version: e.g. a payment that did not move the modification time)
    or "unchanged"."""
    stored = lookup([key for key, _ in keyed], fields) if lookup is not None and keyed else {}
    for key, read in keyed:
        before = stored.get(key)
        if before is None:
            yield key, "new"
        elif any(not same_value(read.get(f), before.get(f)) for f in fields):
            yield key, "changed"
        else:
            yield key, "unchanged"


def require_objects(http: HttpClient, items: list[Any], what: str, endpoint: str) -> list[dict[str, Any]]:
    """The items, each a JSON object; else a SourceError naming `what` and the first offender."""
    for pos, item in enumerate(items):
        if not isinstance(item, dict):
            raise http.error(f"{what}: item {pos} is not an object: {item!r}"[:300], endpoint=endpoint)
    return items
