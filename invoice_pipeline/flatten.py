"""Source-agnostic flattening of nested JSON records into relational tables (columnar buffers).

- a nested object becomes columns: {"erpData": {"dueDate": ..}} -> column "erpData__dueDate";
- an array of objects becomes a child table "<parent table>__<path>" whose rows carry the invoice key,
  their own row id ("3", or "3.1" for the 2nd item under the 4th parent item) and their parent's row id;
- an array of scalars stays one column holding its JSON text (no table per tag list);
- every scalar is kept as text exactly as the API sent it (typed values live in the conformed model),
  so a field that changes type between records can never break a load.
Column and table names are only decided later (see `Naming`): here they are raw JSON paths,
prefixed with FIELD ("."), so a JSON key can never collide with the pipeline's own `_meta` columns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa

ROOT_TABLE = "invoices"
SEP = "__"
FIELD = "."
ROOT_META = ("_invoice_id", "_last_modified_at", "_loaded_at", "_run_id")
CHILD_META = ("_invoice_id", "_row_id", "_parent_row_id", "_position")
MAX_IDENTIFIER = 120
TS = pa.timestamp("us", tz="UTC")
META_ARROW = {"_invoice_id": pa.string(), "_last_modified_at": TS, "_loaded_at": TS, "_run_id": pa.string(),
              "_row_id": pa.string(), "_parent_row_id": pa.string(), "_position": pa.int32()}


class TableBuffer:
    """Columnar rows of one table; a column first seen mid-batch is back-filled with nulls.

    Columns are padded lazily (when next written, or when `columns` is read), so a row costs
    O(its own fields), not O(every column the table has seen): sparse tables stay cheap. A row
    with the same fields as the row before it (the usual case: an API's objects share a shape)
    skips the per-field column lookups.
    """

    __slots__ = ("_cols", "rows", "_shape", "_shape_appends")

    def __init__(self) -> None:
        self._cols: dict[str, list[Any]] = {}
        self.rows = 0
        self._shape: tuple[str, ...] = ()
        self._shape_appends: list[Any] = []

    @property
    def columns(self) -> dict[str, list[Any]]:
        """Every column, padded with nulls to `rows` values."""
        n = self.rows
        for col in self._cols.values():
            if len(col) < n:
                col.extend([None] * (n - len(col)))
        return self._cols

    def to_arrow(self) -> pa.Table:
        """The rows as Arrow: JSON-path columns as text, the meta columns typed."""
        columns = self.columns
        return pa.Table.from_arrays(
            [pa.array(values, type=META_ARROW.get(key, pa.string())) for key, values in columns.items()],
            names=list(columns),
        )

    def append(self, row: dict[str, Any]) -> None:
        n = self.rows
        shape = tuple(row)
        if shape == self._shape:
            # The previous row had exactly these fields, so each of these columns holds n values.
            for append, value in zip(self._shape_appends, row.values()):
                append(value)
            self.rows = n + 1
            return
        cols = self._cols
        appends = []
        for key, value in row.items():
            col = cols.get(key)
            if col is None:
                col = cols[key] = [None] * n
            elif len(col) < n:
                col.extend([None] * (n - len(col)))
            col.append(value)
            appends.append(col.append)
        self.rows = n + 1
        self._shape = shape
        self._shape_appends = appends


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


def flatten_record(
    invoice_id: str, payload: dict[str, Any], tables: dict[str, TableBuffer], root_meta: dict[str, Any]
) -> None:
    """Append one invoice's rows to `tables` (keyed by table path)."""
    row = dict(root_meta)
    row["_invoice_id"] = invoice_id
    _walk(payload, ROOT_TABLE, FIELD, row, invoice_id, "", tables)
    buffer = tables.get(ROOT_TABLE)
    if buffer is None:
        buffer = tables[ROOT_TABLE] = TableBuffer()
    buffer.append(row)


def _walk(obj: dict, table: str, prefix: str, row: dict, invoice_id: str, row_id: str, tables: dict) -> None:
    # The hot loop of the load path: exact-type checks first (parsed JSON has exactly str, None,
    # dict, list, int, float, bool), isinstance only for what a source built itself.
    for key, value in obj.items():
        path = prefix + key if key.__class__ is str else prefix + str(key)
        cls = value.__class__
        if cls is str or value is None:
            row[path] = value
        elif cls is dict or (cls is not list and isinstance(value, dict)):
            if value:
                _walk(value, table, path + SEP, row, invoice_id, row_id, tables)
            else:
                row[path] = "{}"
        elif cls is list or isinstance(value, list):
            for item in value:
                if item.__class__ is dict or isinstance(item, dict | list):
                    _child_rows(value, f"{table}{SEP}{path[1:]}", invoice_id, row_id, tables)
                    break
            else:  # an array of scalars (or an empty one) stays one JSON text column
                row[path] = orjson.dumps(value).decode()
        else:
            row[path] = scalar_text(value)


def _child_rows(items: list, table: str, invoice_id: str, parent_row_id: str, tables: dict) -> None:
    buffer = tables.get(table)
    if buffer is None:
        buffer = tables[table] = TableBuffer()
    value_key = FIELD + "value"
    for pos, item in enumerate(items):
        row_id = f"{parent_row_id}.{pos}" if parent_row_id else str(pos)
        row = {"_invoice_id": invoice_id, "_row_id": row_id, "_parent_row_id": parent_row_id or None, "_position": pos}
        if isinstance(item, dict):
            _walk(item, table, FIELD, row, invoice_id, row_id, tables)
        elif isinstance(item, list):
            row[value_key] = orjson.dumps(item).decode()
        else:
            row[value_key] = scalar_text(item)
        buffer.append(row)


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
        for path in sorted(p for p in set(paths) if p not in self.assigned):
            label = path[len(FIELD):] if path.startswith(FIELD) else path
            base = _shorten(label)
            name, n = base, 2
            while name.lower() in self._taken:
                name = _shorten(f"{label}{SEP}{n}")
                n += 1
            self._taken.add(name.lower())
            self.assigned[path] = name
            new[path] = name
        return new
