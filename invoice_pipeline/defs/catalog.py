"""Catalog metadata in Dagster's own vocabulary: `dagster/row_count`, `dagster/column_schema` (with the
DuckDB column comments as descriptions) and per-table figures as table metadata, so the UI's catalog
shows row counts, columns and their meaning, and plots the counts over time.

The column schema of the conformed tables is also attached to their definitions (from the same text
the warehouse writes as COMMENTs, invoice_pipeline/conformed.py), so the catalog shows it before
any run.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import duckdb

from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.conformed_docs import conformed_columns
from invoice_pipeline.flatten import ROOT_TABLE
from invoice_pipeline.model import ROOT_META_COLUMNS
from invoice_pipeline.sql import quote

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
_ROOT_META_DOCS = {c.name: c.description for c in ROOT_META_COLUMNS}  # a source root table's bookkeeping
_COUNTS_SCHEMA = dg.TableSchema(columns=[dg.TableColumn("table", "string"), dg.TableColumn("rows", "int")])


def conformed_definition_schema(table: str) -> dg.TableSchema:
    """The conformed table's columns, types and documentation, as the warehouse declares them."""
    return dg.TableSchema(columns=[dg.TableColumn(name, type_.lower(), description=doc)
                                   for name, (type_, doc) in conformed_columns()[table].items()])


def counts_table(counts: dict[str, int], key: str = "table") -> dg.TableMetadataValue:
    """{name: rows} as Dagster table metadata (rendered as a table in the UI, not a JSON blob)."""
    schema = _COUNTS_SCHEMA if key == "table" else dg.TableSchema(
        columns=[dg.TableColumn(key, "string"), dg.TableColumn("rows", "int")])
    return dg.MetadataValue.table(
        records=[dg.TableRecord({key: name, "rows": int(n)}) for name, n in counts.items()], schema=schema)


def plain_value(value: Any) -> Any:
    """A metadata value as plain Python: counts tables back to {name: rows} (the CLI's report, demo)."""
    if isinstance(value, dg.TableMetadataValue):
        rows = [r.data for r in value.records]
        if rows and all(set(r) == set(rows[0]) and len(r) == 2 and "rows" in r for r in rows):
            label = next(k for k in rows[0] if k != "rows")
            return {r[label]: r["rows"] for r in rows}
        return rows
    return getattr(value, "value", value)


def table_schema(con: duckdb.DuckDBPyConnection, schema: str, table: str,
                 descriptions: dict[str, str] | None = None) -> dg.TableSchema:
    """Columns of a DuckDB table with their COMMENTs (or `descriptions`) as descriptions."""
    rows = con.execute(
        "SELECT column_name, data_type, comment FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = ? AND table_name = ? ORDER BY column_index", [schema, table]).fetchall()
    extra = descriptions or {}
    return dg.TableSchema(columns=[dg.TableColumn(name, type_.lower(), description=comment or extra.get(name))
                                   for name, type_, comment in rows])


def source_catalog(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, Any]:
    """Row count and column schema of a source's root table; a column's description names the JSON
    path it holds (the source's `_columns` registry)."""
    paths = dict(con.execute(
        f"SELECT column_name, field_path FROM {quote(source)}._columns WHERE table_name = ?", [ROOT_TABLE]).fetchall())
    docs = {**_ROOT_META_DOCS, **{c: f"JSON path {p} of the payload, as sent (text)" for c, p in paths.items()}}
    rows = con.execute(f"SELECT count(*) FROM {quote(source)}.{quote(ROOT_TABLE)}").fetchone()[0]
    return {ROW_COUNT: dg.MetadataValue.int(rows),
            COLUMN_SCHEMA: dg.MetadataValue.table_schema(table_schema(con, source, ROOT_TABLE, docs))}


def conformed_catalog(con: duckdb.DuckDBPyConnection) -> dict[str, dg.TableSchema]:
    """table -> its column schema as stored (comments included), for every conformed table."""
    return {table: table_schema(con, "main", table) for table in CONFORMED_TABLES}
