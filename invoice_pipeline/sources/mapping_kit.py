"""Checks every source's mapping makes of a payload's shape: one place, one wording of the errors.

Each raises MappingError (the record is quarantined with the message as its reason) naming where in
the payload the problem is: `where` is a prefix such as "invoice 42: " or "line 7: ".
"""

from __future__ import annotations

from typing import Any

from invoice_pipeline.money import MappingError, to_text


def nested_object(parent: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """A nested object, or {} when absent or null; anything else is unmappable."""
    value = parent.get(key)
    if value is None:
        return {}
    if type(value) is not dict and not isinstance(value, dict):
        raise MappingError(f"{where}{key}: expected an object, got {type(value).__name__}")
    return value


def loose_object(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested object, or {} for anything else: for APIs that put placeholders there
    (SoftwareOne's "[Circular Reference]") where a missing object is no error."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def objects(items: Any, where: str) -> list[dict[str, Any]]:
    """`items` when it is an array of objects; `where` names the array (e.g. "invoice 4: lines")."""
    if type(items) is not list and not isinstance(items, list):
        raise MappingError(f"{where}: expected an array of objects, got {type(items).__name__}")
    for pos, item in enumerate(items):  # a plain loop: all() over a generator costs more on this hot path
        if type(item) is not dict and not isinstance(item, dict):
            raise MappingError(f"{where}[{pos}]: expected an object, got {type(item).__name__}")
    return items


def object_list(parent: dict[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
    """A nested array of objects, or [] when absent or null; anything else is unmappable."""
    value = parent.get(key)
    if value is None:
        return []
    return objects(value, f"{where}{key}")


def required_text(parent: dict[str, Any], key: str, where: str = "") -> str:
    """An id or code the record cannot be loaded without, as text."""
    value = to_text(parent.get(key))
    if not value:
        raise MappingError(f"{where}{key}: missing")
    return value
