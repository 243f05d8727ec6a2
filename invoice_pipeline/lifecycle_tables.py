"""The lifecycle's tables in main: invoice_history (one row per observed version of each invoice)
and ar_aging_snapshot: their columns, comments and creation, and the version hash.

Plain SQL on a connection, below the warehouse: its in-place upgrade (upgrade.py) creates and
fills these tables too; history.py keeps invoice_history, lifecycle/aging.py fills ar_aging_snapshot.
"""

from __future__ import annotations

import duckdb

from invoice_pipeline.model import MONEY_T
from invoice_pipeline.sql import quote, sql_literal

# column -> (type, comment)
HISTORY_COLUMNS: dict[str, tuple[str, str]] = {
    "source_name": ("VARCHAR", "Configured source name."),
    "invoice_id": ("VARCHAR", "Source key (as in main.invoices)."),
    "valid_from": ("TIMESTAMPTZ", "This version holds from here (inclusive): the source's last-modified time when it "
                                  "moved, else when the pipeline observed the change (payments, deletions)."),
    "valid_to": ("TIMESTAMPTZ", "Until here (exclusive) = the next version's valid_from; NULL for the current version."),
    "invoice_number": ("VARCHAR", "As in main.invoices."),
    "status": ("VARCHAR", "Source status of this version."),
    "document_type": ("VARCHAR", "As in main.invoices: invoice, credit_memo, debit_memo or other."),
    "status_category": ("VARCHAR", "draft, open, paid or void in this version (as in main.invoices)."),
    "is_void": ("BOOLEAN", "status_category = 'void' in this version."),
    "is_deleted": ("BOOLEAN", "Gone from the source (found by deletion reconciliation) in this version."),
    "deleted_detected_at": ("TIMESTAMPTZ", "When the pipeline found the invoice missing (deleted versions only)."),
    "customer_id": ("VARCHAR", "As in main.invoices."),
    "customer_name": ("VARCHAR", "As in main.invoices."),
    "invoice_date": ("DATE", "As in main.invoices."),
    "due_date": ("DATE", "As in main.invoices."),
    "currency_code": ("VARCHAR", "As in main.invoices."),
    "net_amount": (MONEY_T, "As in main.invoices."),
    "tax_amount": (MONEY_T, "As in main.invoices."),
    "freight_amount": (MONEY_T, "As in main.invoices."),
    "total_amount": (MONEY_T, "Header total of this version (<= 0 for a credit memo)."),
    "balance_due": (MONEY_T, "What was owed while this version held."),
    "last_modified_at": ("TIMESTAMPTZ", "The source's last-modified time of this version."),
    "observed_at": ("TIMESTAMPTZ", "When the pipeline loaded this version (main.invoices._loaded_at)."),
    "run_id": ("VARCHAR", "Pipeline run that loaded this version."),
    "version_hash": ("VARCHAR", "md5 of the tracked columns: equal hash = same version."),
}
# A change in any of these is a new version.
TRACKED = ["invoice_number", "status", "is_void", "is_deleted", "customer_id", "customer_name", "invoice_date",
           "due_date", "currency_code", "net_amount", "tax_amount", "total_amount", "balance_due", "last_modified_at"]

AGING_COLUMNS: dict[str, tuple[str, str]] = {
    "snapshot_date": ("DATE", "The day (UTC) whose end the balances describe."),
    "source_name": ("VARCHAR", "Configured source name."),
    "customer_id": ("VARCHAR", "Customer (as in main.invoices)."),
    "customer_name": ("VARCHAR", "Customer name (the latest seen among the aged invoices)."),
    "currency_code": ("VARCHAR", "Currency of the balances (never mixed)."),
    "aging_bucket": ("VARCHAR", "Days past due at snapshot_date: current (not yet due), 1-30, 31-60, 61-90, 90+, no_due_date."),
    "invoice_count": ("BIGINT", "Open documents in the bucket (credit memos included; drafts, voids, deleted left out)."),
    "balance_due": (MONEY_T, "Sum of their balance due, credit memos netted in (negative)."),
    "total_amount": (MONEY_T, "Sum of their invoice totals."),
    "credit_memo_count": ("BIGINT", "Of invoice_count, how many are credit memos (null: computed by an earlier release)."),
    "credit_balance": (MONEY_T, "Of balance_due, what the open credit memos contribute (<= 0; null: computed by an earlier release)."),
    "as_of": ("TIMESTAMPTZ", "The instant whose history versions were aged (the end of snapshot_date, UTC)."),
    "computed_at": ("TIMESTAMPTZ", "When this snapshot row was computed."),
}


def version_hash_sql(alias: str = "") -> str:
    """The version hash of a main.invoices (or history) row; timestamps as epoch µs (zone-proof)."""
    p = f"{alias}." if alias else ""
    parts = ", ".join(
        f"{c} := epoch_us({p}{c})" if c == "last_modified_at" else f"{c} := {p}{c}" for c in TRACKED
    )
    return f"md5(to_json(struct_pack({parts})))"


# -- tables ----------------------------------------------------------------------------------------
TABLE_COMMENTS = {
    "invoice_history": "One row per observed version of each invoice; valid_from inclusive, valid_to exclusive "
                       "(NULL = current). Owed at instant T: the versions with valid_from <= T < coalesce(valid_to, "
                       "infinity), not void, not deleted.",
    "ar_aging_snapshot": "Open balances per source, customer, currency and aging bucket at the end of snapshot_date "
                         "(UTC), from main.invoice_history: drafts, voids and deleted documents left out, credit memos "
                         "netted in (negative); one set of rows per day.",
}


def _existing_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = ?", [table]).fetchall()}


def ensure_lifecycle_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the two tables (with comments) once; later releases' new columns are added."""
    for table, columns in (("invoice_history", HISTORY_COLUMNS), ("ar_aging_snapshot", AGING_COLUMNS)):
        existing = _existing_columns(con, table)
        if not existing:
            cols = ", ".join(f"{quote(c)} {t}" for c, (t, _) in columns.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS main.{table} ({cols})")
            con.execute(f"COMMENT ON TABLE main.{table} IS {sql_literal(TABLE_COMMENTS[table])}")
        for c, (t, doc) in columns.items():
            if c in existing:
                continue
            if existing:
                con.execute(f"ALTER TABLE main.{table} ADD COLUMN {quote(c)} {t}")
            con.execute(f"COMMENT ON COLUMN main.{table}.{quote(c)} IS {sql_literal(doc)}")


# When a new version of an invoice (c: its current row) starts, given the open history row (p, NULL
# for a first version): one rule for both backends (history.py, iceberg/history.py). A first version
# starts at its source modification time; a later one at its deletion's detection, its newer
# modification time, or the load; always after the previous version's start.
VALID_FROM_SQL = """CASE WHEN p.invoice_id IS NULL THEN coalesce(c.last_modified_at, c._loaded_at)
  ELSE greatest(p.valid_from + INTERVAL 1 MICROSECOND,
    CASE WHEN c.is_deleted AND NOT coalesce(p.is_deleted, false) THEN coalesce(c.deleted_detected_at, c._loaded_at)
         WHEN c.last_modified_at > p.last_modified_at THEN c.last_modified_at
         ELSE c._loaded_at END)
  END"""
