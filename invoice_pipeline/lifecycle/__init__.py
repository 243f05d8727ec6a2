"""Invoice lifecycle beyond the load: re-poll open invoices, detect deletions, age the balances.

Plain Python, like pipeline.py; defs/lifecycle.py wires it into Dagster. One module per feature:

- repoll.py: balances move when a payment is applied, often without the invoice's last-modified
  time moving, so a modification window never sees it. `repoll_open_invoices` re-reads the
  invoices still open in the warehouse and merges them like any load (pipeline.load_records).
- deletions.py: an invoice can vanish from a source without a change event.
  `reconcile_deletions` compares the source's ids with the warehouse, confirms each missing one
  and marks the rest `is_deleted` with `deleted_detected_at` (never erased); a deleted invoice
  that shows up again is loaded, which un-deletes it.
- aging.py: `main.ar_aging_snapshot`, balances per source, customer, currency and aging bucket as
  of the end of a day (UTC), computed from the history; recomputing a day replaces that day.

The history of every version (main.invoice_history) is kept by every load, below this package:
history.py and lifecycle_tables.py.
"""

from invoice_pipeline.lifecycle.aging import aging_as_of, build_aging_snapshot
from invoice_pipeline.lifecycle.deletions import ReconcileResult, reconcile_deletions
from invoice_pipeline.lifecycle.repoll import RepollResult, open_invoices, repoll_open_invoices

__all__ = ["ReconcileResult", "RepollResult", "aging_as_of", "build_aging_snapshot", "open_invoices",
           "reconcile_deletions", "repoll_open_invoices"]
