"""What deletion reconciliation (lifecycle/deletions.py) reads and writes with the Iceberg backend.

Stored ids: a source's invoices in `main.invoices` on the `ingest` branch (what the latest loads wrote,
published or not, as the re-poll reads them: iceberg/repoll.py), with the DuckDB query's selection
(last modified since `since`, loaded before the listing began).

Marks: the rows of the gone invoices rewritten with is_deleted = true and deleted_detected_at, as a set
in ONE commit on `ingest` (delete those keys' rows + append the marked rows), re-read and retried on a
conflict like every merge (merge.py); a row reloaded since the listing began (a concurrent run found
it after all) is left alone, as with DuckDB. Then the history step of a load (iceberg/history.py)
records the deletion version (valid_from = deleted_detected_at). A run killed between the two leaves
the history behind; the blocking `history_matches_invoices` audit refuses to publish until the next
reconciliation (or a load of the invoice) records it.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
from pyiceberg.expressions import And, EqualTo, In

from invoice_pipeline.config import IcebergConfig
from invoice_pipeline.iceberg.catalog import HISTORY, INGEST, conformed_schema, ensure_main, open_catalog
from invoice_pipeline.iceberg.history import record_history_batch
from invoice_pipeline.iceberg.merge import _scan_ref, with_retries


def stored_ids(config: IcebergConfig, source_name: str, since: datetime, listing_started: datetime) -> list[tuple]:
    """(invoice_id, customer_id, is_deleted) of the source's invoices on `ingest` last modified at or after
    `since` and loaded before `listing_started` (the DuckDB backend's selection)."""
    table = ensure_main(open_catalog(config))["invoices"]
    rows = _scan_ref(table, EqualTo("source_name", source_name),
                     ("invoice_id", "customer_id", "is_deleted", "last_modified_at", "_loaded_at"))
    con = duckdb.connect()
    try:
        con.register("stored", rows)
        return con.execute("""SELECT invoice_id, customer_id, coalesce(is_deleted, false) FROM stored
            WHERE last_modified_at >= ? AND _loaded_at < ?""", [since, listing_started]).fetchall()
    finally:
        con.close()


def mark_deleted(config: IcebergConfig, source_name: str, ids: list[str], listing_started: datetime,
                 detected: datetime) -> tuple[int, int]:
    """Mark these invoices deleted on `ingest` and record their deletion versions: (marked, history versions)."""
    if not ids:
        return 0, 0
    tables = ensure_main(open_catalog(config))
    invoices = tables["invoices"]
    marked = [0]

    def attempt() -> None:
        invoices.refresh()
        keys = And(EqualTo("source_name", source_name), In("invoice_id", ids))
        rows = _scan_ref(invoices, keys, tuple(conformed_schema("invoices").names))
        con = duckdb.connect()
        try:
            con.register("stored", rows)
            new = con.execute("""SELECT * REPLACE (true AS is_deleted, ?::TIMESTAMPTZ AS deleted_detected_at)
                FROM stored WHERE NOT coalesce(is_deleted, false) AND _loaded_at < ?""",
                              [detected, listing_started]).to_arrow_table()
        finally:
            con.close()
        marked[0] = new.num_rows
        if not new.num_rows:
            return
        new = new.select(conformed_schema("invoices").names).cast(conformed_schema("invoices"))
        with invoices.transaction() as tx:
            tx.delete(And(EqualTo("source_name", source_name), In("invoice_id", new.column("invoice_id").to_pylist())),
                      branch=INGEST)
            tx.append(new, branch=INGEST)

    with_retries(f"table main.invoices (deletion marks of source '{source_name}')", attempt, config.commit_retries)
    versions, _ = record_history_batch(tables[HISTORY], invoices, source_name, ids, config.commit_retries)
    return marked[0], versions

