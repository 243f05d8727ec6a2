"""The daily AR aging snapshot (main.ar_aging_snapshot), computed from the invoice history.

Balances per source, customer, currency and aging bucket as of the end of a day (UTC): the history
versions valid at that instant, drafts, voids and deleted documents left out, credit memos netted
in. The buckets are the ar_aging view's (views.aging_bucket_sql), with the days overdue counted to
the snapshot day instead of today. Recomputing a day replaces that day.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from invoice_pipeline.history import ensure_history_tables
from invoice_pipeline.sql import rollback
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.views import aging_snapshot_sql
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

# Days past the due date (the invoice date when there is none; NULL without either) at the snapshot day.


def aging_as_of(snapshot_date: date) -> datetime:
    """The end of the snapshot day (UTC): versions valid just before this instant are aged."""
    return datetime.combine(snapshot_date + timedelta(days=1), time(0), UTC)


def build_aging_snapshot(wh: Warehouse, snapshot_date: date | None = None, sources: Collection[str] | None = None) -> dict[str, Any]:
    """Replace the snapshot rows of one day with the open balances at its end, from the history.

    Idempotent: recomputing a day deletes and rewrites that day in one transaction. A past day
    can be (re)computed at any time, since the history knows what was owed then.
    """
    day = snapshot_date or utc_now().date()
    as_of = aging_as_of(day)
    src_filter = ""
    params: dict[str, Any] = {"snapshot_date": day, "as_of": as_of}
    if sources is not None:
        src_filter = "AND list_contains($sources, source_name)"
        params["sources"] = list(sources)
    with wh.writer() as con:
        ensure_history_tables(wh, con)
        con.execute("BEGIN TRANSACTION")
        try:
            # only the sources being computed: another config's sources (one file per schedule) keep their rows
            delete_params = {k: v for k, v in params.items() if k != "as_of"}
            con.execute(f"DELETE FROM main.ar_aging_snapshot WHERE snapshot_date = $snapshot_date {src_filter}", delete_params)
            con.execute(
                "INSERT INTO main.ar_aging_snapshot BY NAME " + aging_snapshot_sql(src_filter),
                params,
            )
            rows, invoices = con.execute(
                "SELECT count(*), coalesce(sum(invoice_count), 0) FROM main.ar_aging_snapshot WHERE snapshot_date = ?",
                [day],
            ).fetchall()[0]
            by_bucket = dict(con.execute(
                "SELECT aging_bucket, sum(invoice_count) FROM main.ar_aging_snapshot WHERE snapshot_date = ? GROUP BY 1",
                [day],
            ).fetchall())
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
    log.info("ar_aging_snapshot %s: %d rows, %d open invoices", day.isoformat(), rows, invoices)
    return {"snapshot_date": day.isoformat(), "rows": rows, "open_invoices": invoices,
            "invoices_by_bucket": {k: int(v) for k, v in by_bucket.items()}}
