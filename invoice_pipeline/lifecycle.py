"""Invoice lifecycle: re-poll open invoices, detect deletions, keep the history of every version.

Plain Python, like pipeline.py; defs/lifecycle.py wires it into Dagster.

- Re-poll: balances move when a payment is applied, often without the invoice's last-modified
  time moving, so a modification window never sees it. `repoll_open_invoices` re-reads the
  invoices still open in the warehouse (balance due <> 0, not void, not deleted, due or invoice
  date within `repoll_horizon`) with each source's cheapest read (`repoll` where a client has one,
  e.g. Oracle's list comparison; else `fetch_by_ids`) and merges them like any load (the merge
  accepts an equal last-modified time). After a load in the same job run that compared every
  balance (CRM.COM; Oracle list-only) it reads nothing.
- Deletions: an invoice can vanish from a source without a change event. `reconcile_deletions`
  compares the source's ids (`list_ids`) with the warehouse, confirms each missing one with
  `fetch_by_ids`, and marks the rest `is_deleted` with `deleted_detected_at` (never erased). A
  deleted invoice that shows up again is loaded, which un-deletes it.
- History: `main.invoice_history` holds one row per observed version of each invoice, valid from
  `valid_from` (inclusive) to `valid_to` (exclusive; NULL = the current version), contiguous and
  never overlapping. `record_history` derives it from `main.invoices` after every load and is
  idempotent: a re-run, an overlapping window, a backfill whose older version the merge rejected
  and a replay add nothing.
- `main.ar_aging_snapshot`: balances per source, customer, currency and aging bucket as of the
  end of a day (UTC), computed from the history; recomputing a day replaces that day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

import duckdb

from invoice_pipeline.config import AppConfig, SourceConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.history import (  # noqa: F401 - history_* and record_history re-exported
    _prepare, _record_history, history_candidates, history_out_of_sync, history_violations, record_history)
from invoice_pipeline.lifecycle_tables import ensure_lifecycle_tables, version_hash_sql  # noqa: F401 - re-exported
from invoice_pipeline.pipeline import RunSummary, build_source, run_source
from invoice_pipeline.sources.base import Source, SourceRecord, Window
from invoice_pipeline.sql import rollback
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger("invoice_pipeline.lifecycle")

# Config keys read with these defaults until config.SourceConfig declares them.
DEFAULT_REPOLL_HORIZON: timedelta | None = None  # every open invoice
_FROM_SETTINGS: Any = object()  # repoll_open_invoices(horizon=...) not given: the source's setting
DEFAULT_RECONCILE_SCHEDULE = "0 3 * * *"
DEFAULT_MAX_DELETED_SHARE = 0.5
GUARD_MIN_DELETIONS = 10  # below this many deletions the share guard never trips (small tenants)

AGING_BUCKET_SQL = """CASE
    WHEN coalesce(due_date, invoice_date) IS NULL THEN 'no_due_date'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 0 THEN 'current'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 30 THEN '1-30'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 60 THEN '31-60'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 90 THEN '61-90'
    ELSE '90+' END"""


# -- settings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LifecycleSettings:
    """Per-source lifecycle keys (read with defaults until config.SourceConfig declares them)."""

    repoll_horizon: timedelta | None = DEFAULT_REPOLL_HORIZON
    repoll_schedule: str | None = None  # None/empty: re-poll after every incremental run
    reconcile_schedule: str = DEFAULT_RECONCILE_SCHEDULE
    reconcile_max_deleted_share: float = DEFAULT_MAX_DELETED_SHARE


def lifecycle_settings(config: SourceConfig) -> LifecycleSettings:
    return LifecycleSettings(
        repoll_horizon=config.repoll_horizon,
        repoll_schedule=config.repoll_schedule or None,
        reconcile_schedule=config.reconcile_schedule,
        reconcile_max_deleted_share=config.reconcile_max_deleted_share,
    )


# -- loading specific invoices through run_source --------------------------------------------------
class _GivenInvoices:
    """A source whose extract() yields given batches (fetch_by_ids, records already read) instead
    of a modification window, so re-polls and reappearances load through run_source's merge,
    quarantine, raw payload store, run log and history hook like every other load."""

    def __init__(self, inner: Source, batches: Callable[[], Iterator[list[SourceRecord]]]):
        self._inner = inner
        self._batches = batches

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        return self._batches()

    @property
    def stored_fields(self) -> Any:
        return self._inner.stored_fields

    @stored_fields.setter
    def stored_fields(self, value: Any) -> None:  # run_source sets it: the inner client compares with it
        self._inner.stored_fields = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _load_given(app: AppConfig, source_name: str, wh: Warehouse, src: Source,
                batches: Callable[[], Iterator[list[SourceRecord]]], mode: str) -> RunSummary:
    config = app.sources[source_name]
    # An explicit window makes run_source leave the cursor alone.
    window = Window(config.start_date, utc_now().replace(microsecond=0))
    return run_source(app, source_name, warehouse=wh, window=window, source=cast(Source, _GivenInvoices(src, batches)),
                      mode=mode)


def _fetch_by_ids(src: Source, ids: Collection[str], customer_ids: Collection[str]) -> Iterator[list[SourceRecord]]:
    fetch = getattr(src, "fetch_by_ids", None)
    if fetch is None:
        raise PipelineError(f"source '{src.name}' ({src.type_name}) cannot read specific invoices (no fetch_by_ids)")
    return fetch(ids, customer_ids=customer_ids)


# -- re-poll ---------------------------------------------------------------------------------------
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


def _not_written_by(rows: list[tuple], run_id: str | None) -> list[tuple[str, str | None]]:
    """(invoice_id, customer_id) of those rows whose current version run_id did not write."""
    return [(i, c) for i, c, written_by in rows if run_id is None or written_by != run_id]


def _repoll_reader(src: Source, ids: Collection[str], customer_ids: Collection[str]) -> Iterator[list[SourceRecord]]:
    """The source's re-poll read: `repoll` where a client has a cheaper way than reading each
    invoice (Oracle: list pages, details only of the changed), else `fetch_by_ids`."""
    repoll = getattr(src, "repoll", None)
    if repoll is not None:
        return repoll(ids, customer_ids=customer_ids)
    return _fetch_by_ids(src, ids, customer_ids)


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
    today: date | None = None, horizon: timedelta | None = _FROM_SETTINGS, after_run_id: str | None = None,
    load_compared_all: bool = False,
) -> RepollResult:
    """Re-read the still-open invoices of one source and merge what changed (see module doc).

    after_run_id: the pipeline run of the load this re-poll follows (same job run): the invoices
    it just wrote were read from the API moments ago, so re-reading them would only repeat those
    calls (after a first load of 200k invoices, ~11k calls). load_compared_all: that load compared
    the balance and status of every invoice it listed with the stored version and loaded the
    changed ones (its extract stats say `balances_compared: all`: CRM.COM always, Oracle in
    list-only mode), so nothing is left to read. horizon overrides the source's `repoll_horizon`
    (None: every open invoice); today is for tests (default: UTC today)."""
    wh = warehouse or Warehouse(app.warehouse)
    if horizon is _FROM_SETTINGS:
        horizon = lifecycle_settings(app.sources[source_name]).repoll_horizon
    today = today or utc_now().date()
    with wh.writer() as con:
        _prepare(wh, con)
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
    src = source or build_source(app, source_name)
    result.summary = _load_given(app, source_name, wh, src, lambda: _repoll_reader(src, ids, customers), "repoll")
    result.found = result.summary.invoices_extracted
    result.api_calls, result.pages = result.summary.api_calls, result.summary.pages
    result.detail_calls = int(result.summary.extra.get("detail_calls", 0))
    with wh.writer() as con:
        result.changed = con.execute(
            "SELECT count(*) FROM main.invoice_history WHERE source_name = ? AND run_id = ?",
            [source_name, result.summary.run_id],
        ).fetchall()[0][0]
    log.info("source '%s': re-polled %d open invoices (%d just loaded skipped), %d found, %d changed; %d API calls "
             "(%d list pages, %d detail calls)", source_name, result.open_invoices, result.skipped_just_loaded,
             result.found, result.changed, result.api_calls, result.pages, result.detail_calls)
    return result


# -- deletions -------------------------------------------------------------------------------------
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
    wh = warehouse or Warehouse(app.warehouse)
    config = app.sources[source_name]
    settings = lifecycle_settings(config)
    since = since or config.start_date
    result = ReconcileResult(source_name)
    src = source or build_source(app, source_name)
    handed_over = False
    try:
        started = utc_now()
        list_ids = getattr(src, "list_ids", None)
        if list_ids is None:
            raise PipelineError(f"source '{source_name}' ({config.type}) cannot list its invoice ids (no list_ids)")
        listed: set[str] = list_ids(since)
        result.listed = len(listed)
        with wh.writer() as con:
            _prepare(wh, con)
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
            found = [r for batch in _fetch_by_ids(src, missing | back, customers) for r in batch]
        found_ids = {r.invoice_id for r in found}
        gone = sorted(missing - found_ids)
        result.confirmed_present = len(missing & found_ids)
        active = sum(1 for _, _, deleted in rows if not deleted)
        too_many = len(gone) > GUARD_MIN_DELETIONS and len(gone) > settings.reconcile_max_deleted_share * active
        if too_many and not allow_mass_deletion:
            raise PipelineError(
                f"source '{source_name}': {len(gone)} of {active} invoices would be marked deleted, more than "
                f"reconcile_max_deleted_share={settings.reconcile_max_deleted_share}; refusing (a listing that "
                "misses invoices, e.g. narrowed credentials, must not delete them). Nothing was marked. If they "
                f"really are gone, accept it once: `invoice-pipeline reconcile --source {source_name} "
                f"--allow-mass-deletion`, or launch {source_name}/deletion_reconciliation in the Dagster UI with "
                "config `allow_mass_deletion: true`; or raise reconcile_max_deleted_share in the config."
            )
        if gone:
            _mark_deleted(wh, source_name, gone, started)
        result.deleted = gone
        result.reappeared = sorted(back & found_ids)
        if found:
            handed_over = True  # run_source closes the source
            result.summary = _load_given(app, source_name, wh, src, lambda: iter([found]), "reconcile")
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
        _prepare(wh, con)
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
            _record_history(con, source_name, None)
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise


# -- aging snapshot --------------------------------------------------------------------------------
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
        _prepare(wh, con)
        con.execute("BEGIN TRANSACTION")
        try:
            # only the sources being computed: another config's sources (one file per schedule) keep their rows
            delete_params = {k: v for k, v in params.items() if k != "as_of"}
            con.execute(f"DELETE FROM main.ar_aging_snapshot WHERE snapshot_date = $snapshot_date {src_filter}", delete_params)
            con.execute(
                f"""INSERT INTO main.ar_aging_snapshot BY NAME
                SELECT $snapshot_date::DATE AS snapshot_date, source_name, customer_id,
                       arg_max(customer_name, valid_from) AS customer_name, currency_code,
                       {AGING_BUCKET_SQL} AS aging_bucket, count(*) AS invoice_count,
                       sum(balance_due) AS balance_due, sum(total_amount) AS total_amount,
                       count(*) FILTER (WHERE document_type = 'credit_memo') AS credit_memo_count,
                       coalesce(sum(balance_due) FILTER (WHERE document_type = 'credit_memo'), 0) AS credit_balance,
                       $as_of::TIMESTAMPTZ AS as_of, now() AS computed_at
                FROM main.invoice_history
                WHERE valid_from < $as_of AND (valid_to IS NULL OR valid_to >= $as_of)
                  AND NOT coalesce(is_void, false) AND status_category IS DISTINCT FROM 'draft'
                  AND NOT coalesce(is_deleted, false) AND balance_due <> 0 {src_filter}
                GROUP BY source_name, customer_id, currency_code, aging_bucket""",
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
