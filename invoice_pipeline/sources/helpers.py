"""Small helpers the clients and mappings share: comparing a field with its stored value, checking
list items (a SourceError: the page is wrong) and nested payload parts (a MappingError: the record is)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError


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


def nested_object(parent: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """parent[key] as an object, {} when absent or null; anything else makes the record unmappable."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingError(f"{where}{key}: expected an object, got {type(value).__name__}")
    return value


def object_array(parent: dict[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
    """parent[key] as an array of objects, [] when absent or null; anything else makes the record
    unmappable (the message names the element that is not an object)."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MappingError(f"{where}{key}: expected an array of objects, got {type(value).__name__}")
    for pos, item in enumerate(value):
        if not isinstance(item, dict):
            raise MappingError(f"{where}{key}[{pos}]: expected an object, got {type(item).__name__}")
    return value
