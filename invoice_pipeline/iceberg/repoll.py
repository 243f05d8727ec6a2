"""What a re-poll of open invoices (lifecycle/repoll.py) reads with the Iceberg backend: a source's
invoices on the `ingest` branch of `main.invoices`, only the columns the open-invoice query uses.

`ingest`, not `main`: the re-poll must see what the latest loads wrote (published or not), and
which run wrote each invoice (`_run_id`), so it neither misses an invoice loaded since the last
publish nor re-reads one the load of its own job run read moments ago. The query itself is the
DuckDB backend's (lifecycle/repoll.py `_open_invoices`), run by DuckDB over this Arrow table.
"""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.expressions import EqualTo

from invoice_pipeline.config import IcebergConfig
from invoice_pipeline.iceberg.catalog import ensure_table, conformed_schema, MAIN, open_catalog
from invoice_pipeline.iceberg.merge import _scan_ref

# every column the open-invoice query reads (selection, horizon, and what it returns)
OPEN_INVOICE_COLUMNS = ("source_name", "invoice_id", "customer_id", "_run_id", "balance_due", "is_void", "is_deleted",
                        "due_date", "invoice_date", "last_modified_at")


def invoice_rows(config: IcebergConfig, source_name: str) -> pa.Table:
    """The source's rows of main.invoices on `ingest` (partition-pruned by source), OPEN_INVOICE_COLUMNS only."""
    table = ensure_table(open_catalog(config), MAIN, "invoices", conformed_schema("invoices"))
    return _scan_ref(table, EqualTo("source_name", source_name), OPEN_INVOICE_COLUMNS)
