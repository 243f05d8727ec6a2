"""What the warehouse's tables look like: main's conformed and run tables, views and comments;
each source's flattened tables (created and widened as new paths arrive, capped, with overflow);
the source's name registry (_tables, _columns).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from invoice_pipeline.audit import RULES, create_exceptions_view
from invoice_pipeline.conformed import CONFORMED_TABLES, TABLE_COMMENTS
from invoice_pipeline.conformed_docs import comment_statements, conformed_columns
from invoice_pipeline.flatten import FIELD, ROOT_TABLE, Naming, readable
from invoice_pipeline.jsonio import dumps
from invoice_pipeline.model import (CHILD_META, CHILD_META_TYPES, QUARANTINE_DDL, RAW_DDL, ROOT_META,
                                    ROOT_META_DDL)
from invoice_pipeline.sql import quote
from invoice_pipeline.upgrade import upgrade_conformed
from invoice_pipeline.views import ANALYST_VIEWS, VIEW_COLUMNS, create_analyst_views

log = logging.getLogger(__name__)

INTERNAL_TABLES = ("_raw_invoices", "_quarantine", "_tables", "_columns")
# Field columns one flattened table may have; fields beyond are kept, as one JSON object per row, in
# its OVERFLOW column (registered in _columns under the path OVERFLOW, which no JSON path can be).
MAX_COLUMNS_PER_TABLE = 1000
OVERFLOW = "_overflow"
# New columns added per schema transaction: DuckDB keeps a version of the table per ALTER until the
# transaction ends, so one transaction of n ALTERs costs memory ~n^2 (benchmarks/RESULTS.md, "Figures
# behind design choices in the code").
COLUMNS_PER_SCHEMA_TRANSACTION = 50


# -- main ------------------------------------------------------------------------------------------
def ensure_main(con: duckdb.DuckDBPyConnection) -> None:
    """The conformed tables, views, comments and run tables of this release; a no-op (one
    query) when the database already has them: this runs at the start of every step."""
    key = _main_schema_key()
    try:
        stored = con.execute("SELECT schema_key FROM main._pipeline_schema").fetchone()
    except duckdb.CatalogException:
        stored = None
    if stored is not None and stored[0] == key:
        return
    for table, columns in CONFORMED_TABLES.items():
        cols = ", ".join(f"{quote(c)} {t}" for c, (t, _) in columns.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS main.{table} ({cols})")
        existing = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
            "AND table_schema='main' AND table_name=?", [table]
        ).fetchall()}
        for c, (t, _) in columns.items():
            if c not in existing:  # a column added in a later release of the pipeline
                con.execute(f"ALTER TABLE main.{table} ADD COLUMN {quote(c)} {t}")
    apply_comments(con)
    create_analyst_views(con)
    create_exceptions_view(con)
    con.execute(
        "CREATE TABLE IF NOT EXISTS main._pipeline_cursors (source_name VARCHAR PRIMARY KEY, "
        "cursor_at TIMESTAMPTZ NOT NULL, run_id VARCHAR, updated_at TIMESTAMPTZ)"
    )
    con.execute(
        "CREATE TABLE IF NOT EXISTS main._pipeline_runs (run_id VARCHAR, source_name VARCHAR, mode VARCHAR, "
        "window_start TIMESTAMPTZ, window_end TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, "
        "status VARCHAR, invoices_extracted BIGINT, invoices_loaded BIGINT, invoices_stale BIGINT, "
        "quarantined BIGINT, pages BIGINT, api_calls BIGINT, error VARCHAR)"
    )
    # Rows an earlier release wrote get this release's new columns filled (upgrade.py), before
    # the key is stored: a run killed half-way upgrades the rest next time.
    upgrade_conformed(con)
    con.execute("CREATE OR REPLACE TABLE main._pipeline_schema AS SELECT ?::VARCHAR AS schema_key", [key])


@functools.cache
def _main_schema_key() -> str:
    """Changes whenever this code would create main's tables, views or comments differently."""
    spec = (conformed_columns(), TABLE_COMMENTS, ANALYST_VIEWS, VIEW_COLUMNS, [(r.name, r.blocking, r.sql) for r in RULES])
    return hashlib.sha256(repr(spec).encode()).hexdigest()


def apply_comments(con: duckdb.DuckDBPyConnection, catalog: str = "") -> None:
    """COMMENT ON TABLE and COLUMN for every conformed table and column: where it comes from in each source."""
    for statement in comment_statements(catalog):
        con.execute(statement)


# -- a source's schema -----------------------------------------------------------------------------
def ensure_source(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """The source's schema with its internal tables and its (empty) flattened root table."""
    s = quote(source)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {s}._tables (table_path VARCHAR, table_name VARCHAR)")
    con.execute(f"CREATE TABLE IF NOT EXISTS {s}._columns (table_name VARCHAR, field_path VARCHAR, column_name VARCHAR)")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {s}._raw_invoices ({RAW_DDL})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {s}._quarantine ({QUARANTINE_DDL})")
    con.execute(f"CREATE TABLE IF NOT EXISTS {s}.{quote(ROOT_TABLE)} ({ROOT_META_DDL})")


def source_tables(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, str]:
    """table path -> table name of every flattened table of a source (root included)."""
    rows = con.execute(f"SELECT table_path, table_name FROM {quote(source)}._tables").fetchall()
    return {ROOT_TABLE: ROOT_TABLE, **dict(rows)}


@dataclass
class Registry:
    """Cached contents of a source's _tables/_columns and the row counts they were read at."""

    tables_count: int
    columns_count: int
    tables: dict[str, str]  # table path -> table name (root included)
    columns: dict[str, dict[str, str]]  # table name -> field path -> column name
    pending_counts: tuple[int, int] = (0, 0)  # counts once the current transaction commits

    def bump(self, tables: int = 0, columns: int = 0) -> None:
        self.pending_counts = (self.pending_counts[0] + tables, self.pending_counts[1] + columns)

    def committed(self, tables: int = 0, columns: int = 0) -> None:
        """Rows this process added to _tables/_columns and committed (the cache stays current)."""
        self.tables_count += tables
        self.columns_count += columns
        self.bump(tables, columns)


def read_registry(con: duckdb.DuckDBPyConnection, src: str, cache: dict[str, Registry]) -> Registry:
    """The source's name registry, re-read only when its row counts moved (another writer).

    _tables and _columns are append-only, so equal counts mean the cached names are current.
    """
    s = quote(src)
    counts = con.execute(f"SELECT (SELECT count(*) FROM {s}._tables), (SELECT count(*) FROM {s}._columns)").fetchall()[0]
    registry = cache.get(src)
    if registry is None or (registry.tables_count, registry.columns_count) != counts:
        tables = {ROOT_TABLE: ROOT_TABLE, **dict(con.execute(f"SELECT table_path, table_name FROM {s}._tables").fetchall())}
        columns: dict[str, dict[str, str]] = {}
        for table, path, name in con.execute(f"SELECT table_name, field_path, column_name FROM {s}._columns").fetchall():
            columns.setdefault(table, {})[path] = name
        registry = cache[src] = Registry(counts[0], counts[1], tables, columns)
    registry.pending_counts = counts
    return registry


def evolve(
    con: duckdb.DuckDBPyConnection, src: str, flat: dict[str, pa.Table], registry: Registry, max_columns: int
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Create tables and add columns for paths never seen before, committed before the batch's data.

    Returns table path -> name and, per table path, field path -> column name (a field beyond
    the table's column cap maps to OVERFLOW). A new table is created with all its columns in
    one statement; new columns of an existing table are added COLUMNS_PER_SCHEMA_TRANSACTION
    per transaction (see there why).
    """
    s = quote(src)
    known = registry.tables
    new_tables = Naming(dict(known), reserved=INTERNAL_TABLES).assign(p for p in flat if p not in known)
    columns: dict[str, dict[str, str]] = {}
    for path, rows in flat.items():
        table = known.get(path) or new_tables[path]
        fields = [c for c in rows.column_names if c.startswith(FIELD)]
        assigned = registry.columns.get(table, {})
        new = [p for p in fields if p not in assigned]
        if not new and path in known:
            columns[path] = assigned
            continue
        names = _assign_columns(src, table, assigned, new, max_columns)
        added = {p: n for p, n in names.items() if p not in assigned}
        if path not in known:  # one CREATE with every column: no ALTERs at all
            meta = [f"{quote(c)} {t}" for c, t in CHILD_META_TYPES.items()]
            cols = ", ".join(meta + [f"{quote(n)} VARCHAR" for n in dict.fromkeys(added.values())])
            with _transaction(con):
                con.execute(f"INSERT INTO {s}._tables VALUES (?, ?)", [path, table])
                con.execute(f"CREATE TABLE {s}.{quote(table)} ({cols})")
                if added:
                    con.executemany(f"INSERT INTO {s}._columns VALUES (?, ?, ?)", [[table, p, n] for p, n in added.items()])
            known[path] = table
            registry.committed(tables=1, columns=len(added))
        else:
            items = list(added.items())
            for start in range(0, len(items), COLUMNS_PER_SCHEMA_TRANSACTION):
                chunk = items[start:start + COLUMNS_PER_SCHEMA_TRANSACTION]
                with _transaction(con):
                    con.executemany(f"INSERT INTO {s}._columns VALUES (?, ?, ?)", [[table, p, n] for p, n in chunk])
                    for name in dict.fromkeys(n for _, n in chunk):
                        con.execute(f"ALTER TABLE {s}.{quote(table)} ADD COLUMN {quote(name)} VARCHAR")
                registry.committed(columns=len(chunk))
        registry.columns[table] = assigned = {**assigned, **added}
        columns[path] = {**assigned, **{p: OVERFLOW for p in new if p not in assigned}}
    return known, columns


def _assign_columns(src: str, table: str, assigned: dict[str, str], new: list[str], max_columns: int) -> dict[str, str]:
    """Names for new field paths, up to the table's column cap; the overflow column once needed."""
    reserved = (ROOT_META if table == ROOT_TABLE else CHILD_META) + (OVERFLOW,)
    room = max_columns - sum(1 for p in assigned if p != OVERFLOW)
    kept = sorted(new)[:max(room, 0)]
    names = Naming(assigned, reserved=reserved).assign(kept)
    if len(kept) < len(new):
        log.warning(
            "source '%s': table %s has reached its cap of %d columns; %d more field(s) (e.g. %s) are kept as "
            "JSON in its %s column", src, table, max_columns, len(new) - len(kept),
            readable(sorted(set(new) - set(kept))[0][len(FIELD):]), OVERFLOW)
        if OVERFLOW not in assigned:
            names[OVERFLOW] = OVERFLOW
    return names


def fold_overflow(rows: pa.Table, names: dict[str, str]) -> pa.Table:
    """The rows with the fields beyond the column cap folded into one JSON object per row (OVERFLOW)."""
    over = [c for c in rows.column_names if names.get(c) == OVERFLOW]
    if not over:
        return rows
    values = [rows.column(c).to_pylist() for c in over]
    keys = [readable(c[len(FIELD):]) for c in over]
    folded = []
    for row in zip(*values):
        obj = {k: v for k, v in zip(keys, row) if v is not None}
        folded.append(dumps(obj).decode() if obj else None)
    rows = rows.drop_columns(over)
    return rows.append_column(OVERFLOW, pa.array(folded, pa.string()))


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
