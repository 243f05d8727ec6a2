"""Each source's flattened tables (one per JSON array path, flatten.py) as Iceberg tables.

Names are derived from the paths alone (no name registry as in the DuckDB backend): writers on many
machines then agree on them without coordinating. A table is named like its path (the root:
`invoices`), a column like its JSON path without the leading FIELD marker ("Lines.Amount"); a path
with escaped keys, or a name that would clash with the source's own tables, gets a short hash suffix.
New fields are added by schema evolution (all text, as in DuckDB) before the rows are merged.
Child tables carry their invoice's `_last_modified_at` (the merge's version, see merge.py).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from invoice_pipeline.flatten import ESC, FIELD, META_ARROW, ROOT_META, ROOT_TABLE, readable
from invoice_pipeline.iceberg.catalog import SOURCE_TABLES, VERSION, ensure_table
from invoice_pipeline.iceberg.merge import MergeResult, merge_versioned

MAX_NAME = 120


def _name(label: str, path: str, taken: tuple[str, ...] = ()) -> str:
    if ESC in path or label in taken or len(label) > MAX_NAME or not label:
        digest = hashlib.sha1(path.encode()).hexdigest()[:8]
        return f"{label[:MAX_NAME - 10]}__{digest}"
    return label


def table_name(path: str) -> str:
    return ROOT_TABLE if path == ROOT_TABLE else _name(readable(path), path, tuple(SOURCE_TABLES))


def column_name(path: str) -> str:
    if not path.startswith(FIELD):
        return path  # a _meta column
    return _name(readable(path[len(FIELD):]), path, tuple(META_ARROW) + (VERSION,))


def _rows(path: str, rows: pa.Table, keys: pa.Table) -> pa.Table:
    """Rows with Iceberg column names, every field as text, children with their invoice's version."""
    rows = rows.rename_columns([column_name(c) for c in rows.column_names])
    if path != ROOT_TABLE and VERSION not in rows.column_names:
        versions = dict(zip(keys.column(0).to_pylist(), keys.column(1).to_pylist(), strict=True))
        rows = rows.append_column(VERSION, pa.array([versions.get(i) for i in rows.column("_invoice_id").to_pylist()],
                                                    META_ARROW["_last_modified_at"]))
    return rows


def _evolve(table: Table, schema: pa.Schema, retries: int) -> None:
    for _ in range(retries + 1):
        table.refresh()
        missing = [f for f in schema if f.name not in table.schema().column_names]
        if not missing:
            return
        try:
            with table.update_schema() as update:
                update.union_by_name(pa.schema(missing))
            return
        except CommitFailedException:  # another writer evolved it: look again
            continue


def _meta_schema(path: str) -> pa.Schema:
    names = ROOT_META if path == ROOT_TABLE else ("_invoice_id", "_row_id", "_parent_row_id", "_position", VERSION)
    return pa.schema([(n, META_ARROW.get(n, META_ARROW["_last_modified_at"])) for n in names])


def write_flat(catalog: Catalog, source: str, known: dict[str, Table], flat: dict[str, pa.Table], keys: pa.Table,
               retries: int, result: MergeResult) -> None:
    """Merge the batch's flattened rows; an invoice's rows in tables absent from this batch go too
    (children replaced as a set in every table, as with DuckDB)."""
    batch_tables = {table_name(p): (p, _rows(p, rows, keys)) for p, rows in flat.items()}
    for name, (path, rows) in batch_tables.items():
        if name not in known:
            known[name] = ensure_table(catalog, source, name, _meta_schema(path))
        table = known[name]
        # every field column as text (the DuckDB backend's VARCHAR), whatever Arrow inferred
        fields = pa.schema([(c, pa.string()) if c not in META_ARROW and c != VERSION else (c, rows.schema.field(c).type)
                            for c in rows.column_names])
        _evolve(table, fields, retries)
        target = table.schema().as_arrow()
        rows = rows.cast(fields)
        for f in target:  # columns this batch does not have: nulls
            if f.name not in rows.column_names:
                rows = rows.append_column(f.name, pa.nulls(rows.num_rows, f.type))
        rows = rows.select(target.names).cast(target)
        version = "_last_modified_at" if name == ROOT_TABLE else VERSION
        merge_versioned(table, rows, keys, source=None, key="_invoice_id", version=version, retries=retries,
                        result=result)
    for name, table in known.items():
        if name not in batch_tables and name not in SOURCE_TABLES:
            empty = table.schema().as_arrow().empty_table()
            merge_versioned(table, empty, keys, source=None, key="_invoice_id",
                            version="_last_modified_at" if name == ROOT_TABLE else VERSION, retries=retries)


def known_tables(catalog: Catalog, source: str) -> dict[str, Table]:
    return {ident[-1]: catalog.load_table(ident) for ident in catalog.list_tables(source)
            if ident[-1] not in SOURCE_TABLES}
