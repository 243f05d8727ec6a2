"""Re-poll: re-read the invoices still open in the warehouse, so payments converge.

Balances move when a payment is applied, often without the invoice's last-modified time moving, so
a modification window never sees it. `repoll_open_invoices` re-reads the invoices still open
(balance due <> 0, not void, not deleted, due or invoice date within the source's
`repoll_horizon`) with each source's cheapest read (`repoll` where a client has one, e.g. Oracle's
list comparison; else `fetch_by_ids`) and loads them through pipeline.load_records (the merge
accepts an equal last-modified time; the cursor stays where it is). After a load in the same job
run that compared every balance (CRM.COM; Oracle list-only) it reads nothing.

With `warehouse.backend: iceberg` the same query selects the open invoices from the Iceberg
`main.invoices` (its `ingest` branch, iceberg/repoll.py) and load_records takes the Iceberg write
path (docs/ICEBERG.md, "Re-poll of open invoices").
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import duckdb

from invoice_pipeline.config import AppConfig
from invoice_pipeline.history import ensure_history_tables
from invoice_pipeline.pipeline import RunSummary, load_records
from invoice_pipeline.sources.base import Source, SourceRecord
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

_FROM_CONFIG: Any = object()  # repoll_open_invoices(horizon=...) not given: the source's repoll_horizon


def open_invoices(con: duckdb.DuckDBPyConnection, source_name: str, horizon: timedelta | None,
                  today: date) -> list[tuple[str, str | None]]:
    """(invoice_id, customer_id) of the invoices still open: balance due <> 0, not void, not
    deleted, and due (or invoice) date no older than the horizon (undated ones: last modified)."""
    return _not_written_by(_open_invoices(con, source_name, horizon, today), None)


def _open_invoices(con: duckdb.DuckDBPyConnection, source_name: str, horizon: timedelta | None,
                   today: date) -> list[tuple]:
    """(invoice_id, customer_id, _run_id) of every open invoice (see open_invoices); no horizon: all."""
    oldest = date.min if horizon is None else today - timedelta(days=max(horizon.days, 0))
    return con.execute(
        """SELECT invoice_id, customer_id, _run_id FROM main.invoices
        WHERE source_name = ? AND balance_due <> 0 AND NOT coalesce(is_void, false) AND NOT coalesce(is_deleted, false)
          AND coalesce(greatest(due_date, invoice_date), CAST(last_modified_at AS DATE)) >= ?
        ORDER BY invoice_id""",
        [source_name, oldest],
    ).fetchall()


def _open_invoices_iceberg(app: AppConfig, source_name: str, horizon: timedelta | None, today: date) -> list[tuple]:
    """_open_invoices over the Iceberg `main.invoices` (its `ingest` branch: iceberg/repoll.py), the same
    query run by DuckDB over the Arrow rows, so both backends select the same invoices."""
    from invoice_pipeline.iceberg.repoll import invoice_rows

    rows = invoice_rows(app.warehouse.iceberg, source_name)
    con = duckdb.connect()
    try:
        con.register("invoices", rows)  # in-memory DuckDB: resolves as main.invoices
        return _open_invoices(con, source_name, horizon, today)
    finally:
        con.close()


def _not_written_by(rows: list[tuple], run_id: str | None) -> list[tuple[str, str | None]]:
    """(invoice_id, customer_id) of those rows whose current version run_id did not write."""
    return [(i, c) for i, c, written_by in rows if run_id is None or written_by != run_id]


def _repoll_reader(src: Source, ids: Collection[str], customer_ids: Collection[str]) -> Iterator[list[SourceRecord]]:
    """The source's re-poll read: `repoll` where a client has a cheaper way than reading each
    invoice (Oracle: list pages, details only of the changed), else `fetch_by_ids`."""
    repoll = getattr(src, "repoll", None)  # optional: only clients with a cheaper read define it
    if repoll is not None:
        return repoll(ids, customer_ids=customer_ids)
    return _fetch_by_ids(src, ids, customer_ids)


def _fetch_by_ids(src: Source, ids: Collection[str], customer_ids: Collection[str]) -> Iterator[list[SourceRecord]]:
    """One read per invoice (or per batch of ids, where the API takes several)."""
    return src.fetch_by_ids(ids, customer_ids=customer_ids)


@dataclass
class RepollResult:
    source_name: str
    open_invoices: int = 0  # selected for the re-poll
    skipped_just_loaded: int = 0  # open, but just read by the load this re-poll follows
    skipped_compared_by_load: int = 0  # open, and the load this re-poll follows compared its balance already
    found: int = 0  # returned by the source
    changed: int = 0  # of which a new version (balance, status, ...)
    api_calls: int = 0  # what the re-poll cost (0 when there was nothing to read)
    pages: int = 0
    detail_calls: int = 0
    summary: RunSummary | None = None

    def as_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "summary"}
        if self.summary is not None:
            out.update(run_id=self.summary.run_id, duration_s=self.summary.duration_s,
                       quarantined=self.summary.quarantined)
        return out


def repoll_open_invoices(
    app: AppConfig, source_name: str, *, warehouse: Warehouse | None = None, source: Source | None = None,
    today: date | None = None, horizon: timedelta | None = _FROM_CONFIG, after_run_id: str | None = None,
    load_compared_all: bool = False,
) -> RepollResult:
    """Re-read the still-open invoices of one source and merge what changed (see module doc).

    after_run_id: the pipeline run of the load this re-poll follows (same job run): the invoices
    it just wrote were read from the API moments ago, so re-reading them would only repeat those
    calls (benchmarks/RESULTS.md, addendum 3). load_compared_all: that load compared
    the balance and status of every invoice it listed with the stored version and loaded the
    changed ones (its extract stats say `balances_compared: all`: CRM.COM always, Oracle in
    list-only mode), so nothing is left to read. horizon overrides the source's `repoll_horizon`
    (None: every open invoice); today is for tests (default: UTC today)."""
    iceberg = app.warehouse.backend == "iceberg"  # docs/ICEBERG.md: the same re-poll over the Iceberg tables
    wh = None if iceberg else warehouse or Warehouse(app.warehouse)
    if horizon is _FROM_CONFIG:
        horizon = app.sources[source_name].repoll_horizon
    today = today or utc_now().date()
    if iceberg:
        every = _open_invoices_iceberg(app, source_name, horizon, today)
    else:
        with wh.writer() as con:
            ensure_history_tables(wh, con)
            wh.ensure_source(con, source_name)
            every = _open_invoices(con, source_name, horizon, today)
    rows = _not_written_by(every, after_run_id)
    skipped = len(every) - len(rows)
    compared = 0
    if after_run_id is not None and load_compared_all:
        rows, compared = [], len(rows)
    result = RepollResult(source_name, open_invoices=len(rows), skipped_just_loaded=skipped,
                          skipped_compared_by_load=compared)
    if not rows:
        if source is not None:
            source.close()
        log.info("source '%s': no open invoice to re-poll (%d skipped: just loaded by this run; %d skipped: their "
                 "balances compared by this run's load)", source_name, skipped, compared)
        return result
    ids = [i for i, _ in rows]
    customers = sorted({c for _, c in rows if c})
    result.summary = load_records(app, source_name, lambda src: _repoll_reader(src, ids, customers), mode="repoll",
                                  warehouse=wh, source=source)
    result.found = result.summary.invoices_extracted
    result.api_calls, result.pages = result.summary.api_calls, result.summary.pages
    result.detail_calls = int(result.summary.extra.get("detail_calls", 0))
    if iceberg:  # the versions this run's history steps added (iceberg/history.py), one per changed invoice
        result.changed = result.summary.rows_written.get("main.invoice_history", 0)
    else:
        with wh.writer() as con:
            result.changed = con.execute(
                "SELECT count(*) FROM main.invoice_history WHERE source_name = ? AND run_id = ?",
                [source_name, result.summary.run_id],
            ).fetchall()[0][0]
    log.info("source '%s': re-polled %d open invoices (%d just loaded skipped), %d found, %d changed; %d API calls "
             "(%d list pages, %d detail calls)", source_name, result.open_invoices, result.skipped_just_loaded,
             result.found, result.changed, result.api_calls, result.pages, result.detail_calls)
    return result
