"""Deletion reconciliation: find invoices gone from a source, and those that came back.

An invoice can vanish from a source without a change event. `reconcile_deletions` compares the
source's ids (`list_ids`) with the warehouse, confirms each missing one with `fetch_by_ids`, and
marks the rest `is_deleted` with `deleted_detected_at` (never erased); the history records a
deleted version. A deleted invoice that shows up again is loaded (pipeline.load_records), which
un-deletes it. Not to be confused with reconcile.py, the audit checks of the loaded data.
With `warehouse.backend: iceberg` the stored ids come from and the marks go to the Iceberg
`main.invoices` (its `ingest` branch, iceberg/deletions.py), and load_records takes the Iceberg path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from invoice_pipeline.config import AppConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.history import ensure_history_tables, record_history
from invoice_pipeline.pipeline import RunSummary, build_source, load_records
from invoice_pipeline.sources.base import Source, SourceRecord
from invoice_pipeline.sql import rollback
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

GUARD_MIN_DELETIONS = 10  # below this many deletions the share guard never trips (small tenants)


@dataclass
class ReconcileResult:
    source_name: str
    listed: int = 0  # ids the source listed
    checked: int = 0  # warehouse invoices compared
    missing: int = 0  # not listed
    confirmed_present: int = 0  # not listed but found by a direct read (listing raced a change)
    deleted: list[str] = field(default_factory=list)  # newly marked is_deleted
    reappeared: list[str] = field(default_factory=list)  # marked deleted, found again and reloaded
    summary: RunSummary | None = None

    def as_metadata(self) -> dict[str, Any]:
        return {"listed": self.listed, "checked": self.checked, "missing": self.missing,
                "confirmed_present": self.confirmed_present, "deleted": len(self.deleted),
                "reappeared": len(self.reappeared), "first_deleted": self.deleted[:20],
                "first_reappeared": self.reappeared[:20]}


def reconcile_deletions(
    app: AppConfig, source_name: str, *, warehouse: Warehouse | None = None, source: Source | None = None,
    since: datetime | None = None, allow_mass_deletion: bool = False,
) -> ReconcileResult:
    """Mark invoices gone from the source as deleted; reload deleted ones that came back.

    allow_mass_deletion: skip the reconcile_max_deleted_share guard for this one call (an operator
    who checked that the invoices really are gone).

    since: reconcile only invoices last modified at or after it (default: the source's
    start_date, i.e. everything); a still-existing invoice's last-modified time can only have
    moved forward, so it is in a listing from `since`. Invoices loaded after the listing began
    are left out (a concurrent run may have loaded what the listing could not yet see).
    """
    iceberg = app.warehouse.backend == "iceberg"  # docs/ICEBERG.md: the same reconciliation over the Iceberg tables
    wh = None if iceberg else warehouse or Warehouse(app.warehouse)
    config = app.sources[source_name]
    max_share = config.reconcile_max_deleted_share
    since = since or config.start_date
    result = ReconcileResult(source_name)
    src = source or build_source(app, source_name)
    handed_over = False
    try:
        started = utc_now()
        listed: set[str] = src.list_ids(since)
        result.listed = len(listed)
        if iceberg:
            from invoice_pipeline.iceberg.deletions import stored_ids

            rows = stored_ids(app.warehouse.iceberg, source_name, since, started)
        else:
            with wh.writer() as con:
                ensure_history_tables(wh, con)
                wh.ensure_source(con, source_name)
                rows = con.execute(
                    """SELECT invoice_id, customer_id, coalesce(is_deleted, false) FROM main.invoices
                    WHERE source_name = ? AND last_modified_at >= ? AND _loaded_at < ?""",
                    [source_name, since, started],
                ).fetchall()
        result.checked = len(rows)
        missing = {i for i, _, deleted in rows if not deleted and i not in listed}
        back = {i for i, _, deleted in rows if deleted and i in listed}
        result.missing = len(missing)
        found: list[SourceRecord] = []
        if missing or back:
            customers = sorted({c for i, c, _ in rows if c and (i in missing or i in back)})
            found = [r for batch in src.fetch_by_ids(missing | back, customer_ids=customers) for r in batch]
        found_ids = {r.invoice_id for r in found}
        gone = sorted(missing - found_ids)
        result.confirmed_present = len(missing & found_ids)
        active = sum(1 for _, _, deleted in rows if not deleted)
        too_many = len(gone) > GUARD_MIN_DELETIONS and len(gone) > max_share * active
        if too_many and not allow_mass_deletion:
            raise PipelineError(
                f"source '{source_name}': {len(gone)} of {active} invoices would be marked deleted, more than "
                f"reconcile_max_deleted_share={max_share}; refusing (a listing that "
                "misses invoices, e.g. narrowed credentials, must not delete them). Nothing was marked. If they "
                f"really are gone, accept it once: `invoice-pipeline reconcile --source {source_name} "
                f"--allow-mass-deletion`, or launch {source_name}/deletion_reconciliation in the Dagster UI with "
                "config `allow_mass_deletion: true`; or raise reconcile_max_deleted_share in the config."
            )
        if gone and iceberg:
            from invoice_pipeline.iceberg.deletions import mark_deleted

            mark_deleted(app.warehouse.iceberg, source_name, gone, started, utc_now())
        elif gone:
            _mark_deleted(wh, source_name, gone, started)
        result.deleted = gone
        result.reappeared = sorted(back & found_ids)
        if found:
            handed_over = True  # the load closes the source
            result.summary = load_records(app, source_name, lambda _src: [found], mode="reconcile",
                                          warehouse=wh, source=src)
    finally:
        if not handed_over:
            src.close()
    log.info("source '%s': deletion reconciliation: %d listed, %d checked, %d marked deleted, %d reappeared",
             source_name, result.listed, result.checked, len(result.deleted), len(result.reappeared))
    return result


def _mark_deleted(wh: Warehouse, source_name: str, ids: list[str], listing_started: datetime) -> None:
    """is_deleted + deleted_detected_at in main.invoices and a deleted version in the history, one commit."""
    detected = utc_now()
    with wh.writer() as con:
        ensure_history_tables(wh, con)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE _deleted_ids (invoice_id VARCHAR)")
            con.executemany("INSERT INTO _deleted_ids VALUES (?)", [[i] for i in ids])
            # A row reloaded since the listing began exists after all: leave it.
            con.execute(
                """UPDATE main.invoices SET is_deleted = true, deleted_detected_at = ?
                WHERE source_name = ? AND NOT coalesce(is_deleted, false) AND _loaded_at < ?
                  AND invoice_id IN (SELECT invoice_id FROM _deleted_ids)""",
                [detected, source_name, listing_started],
            )
            con.execute("DROP TABLE _deleted_ids")
            record_history(wh, source_name, None, con=con)
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
