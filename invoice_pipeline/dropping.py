"""Removing a source from the warehouse: the only way its conformed rows go (`invoice-pipeline drop-source`).

A run never deletes a source's rows because the source is missing from its config (one config
file per source is normal; publish.refresh_conformed). Dropping is explicit and whole: the
source's rows in every main table that has a `source_name` (conformed tables, history, aging,
cursor), and its schema (raw payloads, flattened tables, quarantine), in one transaction, so
that loading it again later starts from `start_date` and rebuilds everything. The run log
(`main._pipeline_runs`) is kept as the audit trail. The published snapshot and lake drop the
source at the next publish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from invoice_pipeline.config import AppConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.sql import quote
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger("invoice_pipeline.dropping")
KEPT_TABLES = frozenset({"_pipeline_runs"})  # the run log stays: it records what ran, dropped or not


@dataclass
class DropSummary:
    source_name: str
    rows: dict[str, int] = field(default_factory=dict)  # main table -> rows of the source (removed, or to remove)
    schema_tables: dict[str, int] = field(default_factory=dict)  # table of the source's schema -> rows
    cursor_at: str | None = None
    dropped: bool = False

    @property
    def found(self) -> bool:
        return any(self.rows.values()) or bool(self.schema_tables)

    def describe(self) -> list[str]:
        verb = "removed" if self.dropped else "would remove"
        lines = [f"{verb}: main.{t}: {n} rows of source '{self.source_name}'" for t, n in self.rows.items() if n]
        if self.schema_tables:
            lines.append(f"{verb}: schema {self.source_name} ({len(self.schema_tables)} tables: " + ", ".join(
                f"{t} {n} rows" for t, n in self.schema_tables.items()) + ")")
        if self.cursor_at:
            lines.append(f"{verb}: cursor at {self.cursor_at} (a new load starts from start_date)")
        return lines


def _tables_with_source(con) -> list[str]:
    return [t for (t,) in con.execute(
        "SELECT DISTINCT table_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND column_name = 'source_name' AND table_name IN (SELECT table_name FROM "
        "duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main') ORDER BY 1").fetchall()
            if t not in KEPT_TABLES]


def drop_source(app: AppConfig, source_name: str, *, apply: bool) -> DropSummary:
    """What the source has in the warehouse; with apply=True, remove all of it in one transaction."""
    path = Path(app.warehouse.duckdb_path)
    if not path.exists():
        raise PipelineError(f"drop-source: no warehouse at {path} (config key 'warehouse.duckdb_path')")
    wh = Warehouse(app.warehouse)
    summary = DropSummary(source_name)
    with wh.writer() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            tables = _tables_with_source(con)
            has_cursors = "_pipeline_cursors" in tables
            for table in tables:
                summary.rows[table] = con.execute(
                    f"SELECT count(*) FROM main.{quote(table)} WHERE source_name = ?", [source_name]).fetchone()[0]
            row = con.execute("SELECT cursor_at FROM main._pipeline_cursors WHERE source_name = ?",
                              [source_name]).fetchone() if has_cursors else None
            summary.cursor_at = row[0].isoformat() if row else None
            summary.rows.pop("_pipeline_cursors", None)  # reported as the cursor
            for (table,) in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? "
                    "ORDER BY 1", [source_name]).fetchall():
                summary.schema_tables[table] = con.execute(
                    f"SELECT count(*) FROM {quote(source_name)}.{quote(table)}").fetchone()[0]
            if not summary.found and not summary.cursor_at:
                present = [s for (s,) in con.execute(
                    "SELECT DISTINCT source_name FROM main.invoices UNION SELECT source_name FROM main._pipeline_cursors "
                    "ORDER BY 1").fetchall()] if "invoices" in summary.rows and has_cursors else []
                raise PipelineError(f"drop-source: source '{source_name}' has nothing in {path} "
                                    f"(sources there: {', '.join(present) or 'none'})")
            if apply:
                for table in [*summary.rows, *(["_pipeline_cursors"] if has_cursors else [])]:
                    con.execute(f"DELETE FROM main.{quote(table)} WHERE source_name = ?", [source_name])
                if summary.schema_tables:
                    con.execute(f"DROP SCHEMA {quote(source_name)} CASCADE")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    summary.dropped = apply
    if apply:
        log.info("source '%s' dropped from %s: %s", source_name, path, "; ".join(summary.describe()))
    return summary
