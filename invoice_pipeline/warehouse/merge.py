"""Idempotent merges of prepared batches (batch.py) into a source's tables and the conformed model.

Merge rule: an invoice is replaced only by a version at least as new as the stored one (equal
last-modified time included: a re-poll's new balance replaces the old one), and its child rows (in
every flattened table and every conformed table) are replaced as a set. Each batch commits in one
transaction; the cursor moves only in the transaction of the last batch, so a failed or killed run
leaves it where it was and a re-run merges the same rows again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from invoice_pipeline.model import LoadBatch
from invoice_pipeline.flatten import ROOT_TABLE
from invoice_pipeline.sql import quote, rollback
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.warehouse.schema import Registry, evolve, fold_overflow, read_registry


@dataclass
class BatchResult:
    accepted: int = 0
    stale: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)


def write_batch(con: duckdb.DuckDBPyConnection, batch: LoadBatch, registries: dict[str, Registry],
                max_columns: int) -> BatchResult:
    """One transaction: evolve the schema, replace accepted invoices everywhere, keep raw payloads.

    Cost is bounded by the batch, not by the warehouse: child rows are deleted only when an
    accepted invoice is already stored (never on a first load, whose deletes would each scan
    a whole table), and the name registry is re-read only when another writer changed it.
    registries: the per-source name registry cache (schema.read_registry) of this warehouse.
    """
    src = batch.source_name
    s = quote(src)
    result = BatchResult()
    # The schema first, in transactions of its own (memory stays flat however many columns are
    # new); names and columns it adds are harmless if the data transaction then fails.
    registry = read_registry(con, src, registries)
    try:
        tables, columns = evolve(con, src, batch.flat, registry, max_columns)
    except BaseException:
        registries.pop(src, None)  # re-read what was committed
        raise
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_stage_keys", batch.keys)
        # Versions at least as new as the stored one win; an older one (a backfill, an
        # overlapping window) is skipped, never written over newer data.
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _accepted AS
            SELECT k.invoice_id, t._invoice_id IS NOT NULL AS stored
            FROM _stage_keys k LEFT JOIN {s}.{quote(ROOT_TABLE)} t ON t._invoice_id = k.invoice_id
            WHERE t._invoice_id IS NULL OR k.last_modified_at IS NULL OR t._last_modified_at IS NULL
               OR k.last_modified_at >= t._last_modified_at"""
        )
        result.accepted, stored = con.execute("SELECT count(*), count(*) FILTER (stored) FROM _accepted").fetchall()[0]
        result.stale = batch.keys.num_rows - result.accepted
        accepted = "(SELECT invoice_id FROM _accepted)"
        # Rows of the batch whose invoice is not accepted (stale) are filtered out on insert.
        only_accepted = "" if result.stale == 0 else f" WHERE _invoice_id IN {accepted}"
        if stored:  # every flattened row of an invoice is written with its root row
            for table_name in tables.values():
                con.execute(f"DELETE FROM {s}.{quote(table_name)} WHERE _invoice_id IN {accepted}")
        for path, rows in batch.flat.items():
            name = tables[path]
            names = columns[path]
            rows = fold_overflow(rows, names)
            con.register("_stage_rows", rows.rename_columns([names.get(c, c) for c in rows.column_names]))
            con.execute(f"INSERT INTO {s}.{quote(name)} BY NAME SELECT * FROM _stage_rows{only_accepted}")
            con.unregister("_stage_rows")
            result.rows_written[name] = rows.num_rows
        conformed_stored = con.execute(
            f"SELECT count(*) FROM main.invoices WHERE source_name = ? AND invoice_id IN {accepted}", [src]
        ).fetchall()[0][0]
        conformed_filter = "" if result.stale == 0 else f" WHERE invoice_id IN {accepted}"
        for table, arrow in batch.conformed.items():
            if conformed_stored:  # conformed child rows are written with their invoice row
                con.execute(f"DELETE FROM main.{table} WHERE source_name = ? AND invoice_id IN {accepted}", [src])
            if not arrow.num_rows:
                continue
            con.register("_stage_conformed", arrow)
            con.execute(f"INSERT INTO main.{table} BY NAME SELECT * FROM _stage_conformed{conformed_filter}")
            con.unregister("_stage_conformed")
        if batch.raw.num_rows:
            con.register("_stage_raw", batch.raw)
            # Every distinct payload is kept once: a re-run adds nothing, a changed invoice adds a version.
            con.execute(
                f"""INSERT INTO {s}._raw_invoices SELECT r.* FROM _stage_raw r WHERE NOT EXISTS (
                    SELECT 1 FROM {s}._raw_invoices x WHERE x.invoice_id = r.invoice_id AND x.payload_sha256 = r.payload_sha256)"""
            )
            con.unregister("_stage_raw")
        if batch.quarantine.num_rows:
            con.register("_stage_quarantine", batch.quarantine)
            con.execute(f"INSERT INTO {s}._quarantine SELECT * FROM _stage_quarantine")
            con.unregister("_stage_quarantine")
        if batch.cursor is not None:
            con.execute(
                "INSERT OR REPLACE INTO main._pipeline_cursors VALUES (?, ?, ?, ?)",
                [src, batch.cursor, batch.run_id, batch.loaded_at],
            )
        con.unregister("_stage_keys")
        pause_point("batch_write")  # tests kill a run here: a transaction written, not committed
        con.execute("COMMIT")
    except BaseException:
        registries.pop(src, None)  # names added in this transaction were rolled back
        rollback(con)
        raise
    registry.tables_count, registry.columns_count = registry.pending_counts
    return result


def stored_cursor(con: duckdb.DuckDBPyConnection, source: str) -> datetime | None:
    """The source's cursor, as the last batch of its last successful incremental run committed it."""
    row = con.execute("SELECT cursor_at FROM main._pipeline_cursors WHERE source_name = ?", [source]).fetchone()
    return row[0] if row else None
