"""main.ar_aging_snapshot in Iceberg: open balances per source, customer, currency and aging bucket at the
end of a UTC day, from the PUBLISHED (`main`, audited) main.invoice_history.

The rows are the DuckDB backend's (lifecycle/aging.py: same columns, same filter and buckets, the
query below kept identical to its INSERT). Recomputing a day replaces that day's rows of the
configured sources in one commit on `main` (retried on a conflict): the input is already audited
and the rows follow from it, so they need no `ingest` branch of their own.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.expressions import And, EqualTo, In

from invoice_pipeline.config import AppConfig
from invoice_pipeline.conformed import ARROW_SCHEMAS
from invoice_pipeline.iceberg.catalog import HISTORY, HISTORY_SCHEMA, MAIN, TS, ensure_table, open_catalog
from invoice_pipeline.iceberg.merge import with_retries
from invoice_pipeline.lifecycle_tables import AGING_COLUMNS
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.views import aging_snapshot_sql

log = logging.getLogger("invoice_pipeline.iceberg")

AGING = "ar_aging_snapshot"
_TYPES = {"DATE": pa.date32(), "VARCHAR": pa.string(), "BIGINT": pa.int64(), "TIMESTAMPTZ": TS}
AGING_SCHEMA = pa.schema([(c, _TYPES.get(t, ARROW_SCHEMAS["invoices"].field("balance_due").type))
                          for c, (t, _) in AGING_COLUMNS.items()])


def build_aging_snapshot_iceberg(app: AppConfig, snapshot_date: date | None = None) -> dict[str, Any]:
    """Replace one day's snapshot rows of the configured sources; returns what lifecycle/aging.py returns."""
    day = snapshot_date or utc_now().date()
    as_of = datetime.combine(day + timedelta(days=1), time(0), UTC)
    sources = list(app.sources)
    catalog = open_catalog(app.warehouse.iceberg)
    history = ensure_table(catalog, MAIN, HISTORY, HISTORY_SCHEMA)
    published = history.scan().to_arrow()  # `main`: audited versions only
    con = duckdb.connect()
    try:
        con.register("_history", published)
        con.execute("CREATE VIEW main.invoice_history AS SELECT * FROM _history")
        rows = con.execute(
            aging_snapshot_sql("AND list_contains($sources, source_name)"),
            {"snapshot_date": day, "as_of": as_of, "sources": sources}).to_arrow_table()
    finally:
        con.close()
    rows = rows.select(AGING_SCHEMA.names).cast(AGING_SCHEMA)
    table = ensure_table(catalog, MAIN, AGING, AGING_SCHEMA)

    def attempt() -> None:
        table.refresh()
        with table.transaction() as tx:
            tx.delete(And(EqualTo("snapshot_date", day.isoformat()), In("source_name", sources)))
            if rows.num_rows:
                tx.append(rows)

    with_retries(f"table {MAIN}.{AGING}", attempt, app.warehouse.iceberg.commit_retries)
    by_bucket: dict[str, int] = {}
    for bucket, n in zip(rows.column("aging_bucket").to_pylist(), rows.column("invoice_count").to_pylist(), strict=True):
        by_bucket[bucket] = by_bucket.get(bucket, 0) + n
    invoices = sum(by_bucket.values())
    log.info("ar_aging_snapshot %s (Iceberg): %d rows, %d open invoices", day.isoformat(), rows.num_rows, invoices)
    return {"snapshot_date": day.isoformat(), "rows": rows.num_rows, "open_invoices": invoices,
            "invoices_by_bucket": by_bucket}
