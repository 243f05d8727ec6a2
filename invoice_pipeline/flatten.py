"""Source-agnostic flattening of nested JSON records into relational tables (columnar buffers).

- a nested object becomes columns: {"erpData": {"dueDate": ..}} -> column "erpData__dueDate";
- an array of objects becomes a child table "<parent table>__<path>" whose rows carry the invoice key,
  their own row id ("3", or "3.1" for the 2nd item under the 4th parent item) and their parent's row id;
- an array of scalars stays one column holding its JSON text (no table per tag list);
- every scalar is kept as text exactly as the API sent it (typed values live in the conformed model),
  so a field that changes type between records can never break a load.
Column and table names are only decided later (see `Naming`): here they are raw JSON paths,
prefixed with FIELD ("."), so a JSON key can never collide with the pipeline's own `_meta` columns.

Paths are injective: a key that could be mistaken for a nesting once joined with SEP ("Meta__x" beside
{"Meta": {"x": ..}}, a key starting or ending with "_", an empty key) is written escaped in its path
(`escape_key`), so two different places in a payload never share a column or a child table. Its SQL
name still reads as the key (`Naming` unescapes it); if that name is taken, the newcomer gets the
usual "__2" suffix. Names already assigned never change.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from invoice_pipeline.jsonio import dumps
from invoice_pipeline.model import CHILD_META, META_ARROW, ROOT_META, TS  # the meta columns: one definition

__all__ = ["CHILD_META", "FIELD", "META_ARROW", "ROOT_META", "ROOT_TABLE", "SEP", "TS", "Naming", "TableBuffer",
           "escape_key", "flatten_record", "readable", "scalar_text"]

ROOT_TABLE = "invoices"
SEP = "__"
FIELD = "."
MAX_IDENTIFIER = 120
ESC = "\x1f"  # brackets an escaped key inside a path (see escape_key); never in a SQL name


class TableBuffer:
    """Columnar rows of one table; a column first seen mid-batch is back-filled with nulls.

    Rows are kept as runs of value tuples, one run per stretch of consecutive rows with the same
    fields (the usual case: an API's objects share a shape), and turned into columns only when
    `columns` is read: zip() then transposes each run and list.extend() copies it, both in C,
    instead of one Python-level append per field. Columns are padded with nulls there too, so a
    row costs O(its own fields), not O(every column the table has seen): sparse tables stay cheap.
    """

    __slots__ = ("_cols", "rows", "_runs", "_shape", "_values")

    def __init__(self) -> None:
        self._cols: dict[str, list[Any]] = {}
        self.rows = 0
        self._runs: list[tuple[tuple[str, ...], int, list[tuple[Any, ...]]]] = []  # (fields, first row, values)
        self._shape: tuple[str, ...] | None = None  # the fields of the open (last) run
        self._values: list[tuple[Any, ...]] = []  # the open run's rows

    @property
    def columns(self) -> dict[str, list[Any]]:
        """Every column, padded with nulls to `rows` values."""
        cols = self._cols
        for shape, first, values in self._runs:
            for key, column in zip(shape, zip(*values)):
                col = cols.get(key)
                if col is None:
                    col = cols[key] = [None] * first
                elif len(col) < first:
                    col.extend([None] * (first - len(col)))
                col.extend(column)
        self._runs.clear()
        self._shape = None  # the next row opens a new run
        n = self.rows
        for col in cols.values():
            if len(col) < n:
                col.extend([None] * (n - len(col)))
        return cols

    def to_arrow(self) -> pa.Table:
        """The rows as Arrow: JSON-path columns as text, the meta columns typed."""
        if len(self._runs) == 1 and not self._cols:
            # Every row has the same fields (the usual case): arrays straight from the transposed
            # run, without copying it into column lists first.
            shape, _, values = self._runs[0]
            columns: dict[str, Any] = dict(zip(shape, zip(*values)))
        else:
            columns = self.columns
        return pa.Table.from_arrays(
            [pa.array(values, type=META_ARROW.get(key, pa.string())) for key, values in columns.items()],
            names=list(columns),
        )

    def append(self, row: dict[str, Any]) -> None:
        shape = tuple(row)
        if shape != self._shape:
            self._shape = shape
            self._values = []
            self._runs.append((shape, self.rows, self._values))
        self._values.append(tuple(row.values()))
        self.rows += 1


def scalar_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _ambiguous(key: str, top: bool) -> bool:
    """Would this key, joined with SEP to its neighbours, read as a different nesting?"""
    return (not key or SEP in key or key.endswith("_") or (key.startswith("_") and not top)
            or key.startswith(ESC))


def escape_key(key: str) -> str:
    """ESC + key with "%", "_" and ESC percent-encoded + ESC: holds no "_", so no SEP can form across it."""
    return ESC + key.replace("%", "%25").replace("_", "%5F").replace(ESC, "%1F") + ESC


_ESCAPED = re.compile(ESC + "([^" + ESC + "]*)" + ESC)


def readable(path: str) -> str:
    """A path with its escaped keys written as the keys themselves (for SQL names)."""
    if ESC not in path:
        return path
    return _ESCAPED.sub(lambda m: m.group(1).replace("%1F", ESC).replace("%5F", "_").replace("%25", "%"), path)


class _Paths:
    """The column paths under one prefix of one table, built on first use.

    `of` maps a JSON key to its path ("<prefix><key>"): flattening looks every path up there
    instead of concatenating it per record, which saves a string build and, as the cached string
    keeps its hash, the hashing when the row dict stores it; rows then also share their key objects,
    so TableBuffer compares row shapes by identity. Nested objects and child tables get their own
    _Paths, cached by path (`nested`, `children`).
    """

    __slots__ = ("table", "prefix", "of", "nested", "children")

    def __init__(self, table: str, prefix: str) -> None:
        self.table = table
        self.prefix = prefix
        self.of: dict[str, str] = {}  # a plain dict: subscripting it is the fastest lookup there is
        self.nested: dict[str, _Paths] = {}
        self.children: dict[str, _Paths] = {}

    def path(self, key: Any) -> str:
        """The path of a key not cached yet (only exact str keys are cached: what JSON has)."""
        text = key if type(key) is str else str(key)
        path = self.prefix + (escape_key(text) if _ambiguous(text, self.prefix == FIELD) else text)
        if type(key) is str:
            self.of[key] = path
            _count_cached()
        return path

    def nested_paths(self, path: str) -> _Paths:
        paths = self.nested[path] = _Paths(self.table, path + SEP)
        _count_cached()
        return paths

    def child_paths(self, path: str) -> _Paths:
        paths = self.children[path] = _table_paths(f"{self.table}{SEP}{path[1:]}")
        _count_cached()
        return paths


_TABLE_PATHS: dict[str, _Paths] = {}  # table -> the _Paths of its top level (prefix FIELD)
_CACHE_LIMIT = 20_000  # cached paths; a source with data-dependent keys must not grow it forever
_cached = 0


def _table_paths(table: str) -> _Paths:
    paths = _TABLE_PATHS.get(table)
    if paths is None:
        paths = _TABLE_PATHS[table] = _Paths(table, FIELD)
    return paths


def _count_cached() -> None:
    global _cached
    _cached += 1
    if _cached > _CACHE_LIMIT:  # start over; _Paths still in use by a running walk stay valid
        _TABLE_PATHS.clear()
        _cached = 0


def flatten_record(
    invoice_id: str, payload: dict[str, Any], tables: dict[str, TableBuffer], root_meta: dict[str, Any]
) -> None:
    """Append one invoice's rows to `tables` (keyed by table path)."""
    row = dict(root_meta)
    row["_invoice_id"] = invoice_id
    _walk(payload, _table_paths(ROOT_TABLE), row, invoice_id, "", tables)
    buffer = tables.get(ROOT_TABLE)
    if buffer is None:
        buffer = tables[ROOT_TABLE] = TableBuffer()
    buffer.append(row)


_NESTED = (dict, list)
_VALUE = FIELD + "value"  # the column of an array item that is not an object


def _walk(obj: dict, paths: _Paths, row: dict, invoice_id: str, row_id: str, tables: dict) -> None:
    # The hot loop of the load path: exact-type checks first (parsed JSON has exactly str, None,
    # dict, list, int, bool, float), in order of frequency; the scalar branches are scalar_text()
    # inlined for the exact JSON types; isinstance only for what a source built itself.
    of = paths.of
    for key, value in obj.items():
        try:
            path = of[key]
        except KeyError:  # a path not seen yet (or a non-str key, never cached)
            path = paths.path(key)
        cls = type(value)
        if cls is str or value is None:
            row[path] = value
        elif cls is dict:
            _object(value, path, paths, row, invoice_id, row_id, tables)
        elif cls is int:
            row[path] = str(value)
        elif cls is list:
            _array(value, path, paths, row, invoice_id, row_id, tables)
        elif cls is bool:
            row[path] = "true" if value else "false"
        elif cls is float:
            row[path] = repr(value)
        elif isinstance(value, dict):  # from here on: subclasses a source built itself
            _object(value, path, paths, row, invoice_id, row_id, tables)
        elif isinstance(value, list):
            _array(value, path, paths, row, invoice_id, row_id, tables)
        else:
            row[path] = scalar_text(value)


def _object(value: dict, path: str, paths: _Paths, row: dict, invoice_id: str, row_id: str, tables: dict) -> None:
    """A nested object: its fields become columns of the same row ("{}" when it is empty)."""
    if value:
        _walk(value, paths.nested.get(path) or paths.nested_paths(path), row, invoice_id, row_id, tables)
    else:
        row[path] = "{}"


def _array(value: list, path: str, paths: _Paths, row: dict, invoice_id: str, row_id: str, tables: dict) -> None:
    """An array holding objects (or arrays) is a child table; one of scalars stays one JSON text column."""
    for item in value:
        if type(item) is dict or isinstance(item, _NESTED):
            _child_rows(value, paths.children.get(path) or paths.child_paths(path), invoice_id, row_id, tables)
            return
    row[path] = dumps(value).decode()


def _child_rows(items: list, paths: _Paths, invoice_id: str, parent_row_id: str, tables: dict) -> None:
    table = paths.table
    buffer = tables.get(table)
    if buffer is None:
        buffer = tables[table] = TableBuffer()
    append = buffer.append
    parent = parent_row_id or None
    for pos, item in enumerate(items):
        row_id = f"{parent_row_id}.{pos}" if parent_row_id else str(pos)
        row = {"_invoice_id": invoice_id, "_row_id": row_id, "_parent_row_id": parent, "_position": pos}
        if type(item) is dict or isinstance(item, dict):
            _walk(item, paths, row, invoice_id, row_id, tables)
        elif isinstance(item, list):
            row[_VALUE] = dumps(item).decode()
        else:
            row[_VALUE] = scalar_text(item)
        append(row)


def _shorten(name: str) -> str:
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[: MAX_IDENTIFIER - 12]}_{digest}"


class Naming:
    """Maps JSON paths to SQL names that are unique case-insensitively (DuckDB folds case).

    Assignments are persisted by the warehouse, so a name, once given, never changes; new paths
    are named in sorted order, so the same data always gets the same names. Names are used only
    as quoted identifiers, so any character is safe.
    """

    def __init__(self, assigned: dict[str, str], reserved: Iterable[str] = ()):
        self.assigned = dict(assigned)
        self._taken = {n.lower() for n in self.assigned.values()} | {r.lower() for r in reserved}

    def assign(self, paths: Iterable[str]) -> dict[str, str]:
        """Name the new paths; returns only the newly assigned ones."""
        new: dict[str, str] = {}
        # Plain paths first: when an escaped key reads like a nesting, the nesting keeps the plain name.
        for path in sorted((p for p in set(paths) if p not in self.assigned), key=lambda p: (ESC in p, p)):
            label = readable(path[len(FIELD):] if path.startswith(FIELD) else path)
            base = _shorten(label)
            name, n = base, 2
            while name.lower() in self._taken:
                name = _shorten(f"{label}{SEP}{n}")
                n += 1
            self._taken.add(name.lower())
            self.assigned[path] = name
            new[path] = name
        return new
