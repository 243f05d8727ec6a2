"""SQL text helpers: names and values from APIs are data, always quoted."""

from __future__ import annotations


def quote(name: str) -> str:
    """A safe SQL identifier whatever characters the API put in a field name."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
