"""Small helpers the clients share: comparing a field with its stored value, checking list items."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from invoice_pipeline.http import HttpClient


def same_value(read: Any, stored: Any) -> bool:
    """A field read now equals its stored value: amounts as numbers ("1250" == "1250.00"), else as text."""
    if read is None or stored is None:
        return read is None and stored is None
    try:
        return Decimal(str(read)) == Decimal(str(stored))
    except InvalidOperation:
        return str(read) == str(stored)


def require_objects(http: HttpClient, items: list[Any], what: str, endpoint: str) -> list[dict[str, Any]]:
    """The items, each a JSON object; else a SourceError naming `what` and the first offender."""
    for pos, item in enumerate(items):
        if not isinstance(item, dict):
            raise http.error(f"{what}: item {pos} is not an object: {item!r}"[:300], endpoint=endpoint)
    return items
