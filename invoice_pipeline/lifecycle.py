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
from invoice_pipeline.pipeline import RunSummary, build_source, run_source
from invoice_pipeline.sources.base import Source, SourceRecord, Window
from invoice_pipeline.sql import quote, rollback, sql_literal
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger("invoice_pipeline.lifecycle")

MONEY_T = "DECIMAL(18,4)"

# Config keys read with these defaults until config.SourceConfig declares them.
DEFAULT_REPOLL_HORIZON: timedelta | None = None  # every open invoice
_FROM_SETTINGS: Any = object()  # repoll_open_invoices(horizon=...) not given: the source's setting
DEFAULT_RECONCILE_SCHEDULE = "0 3 * * *"
DEFAULT_MAX_DELETED_SHARE = 0.5
GUARD_MIN_DELETIONS = 10  # below this many deletions the share guard never trips (small tenants)

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
AGING_BUCKET_SQL = """CASE
    WHEN coalesce(due_date, invoice_date) IS NULL THEN 'no_due_date'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 0 THEN 'current'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 30 THEN '1-30'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 60 THEN '31-60'
    WHEN date_diff('day', coalesce(due_date, invoice_date), $snapshot_date) <= 90 THEN '61-90'
    ELSE '90+' END"""


def version_hash_sql(alias: str = "") -> str:
    """The version hash of a main.invoices (or history) row; timestamps as epoch µs (zone-proof)."""
    p = f"{alias}." if alias else ""
    parts = ", ".join(
        f"{c} := epoch_us({p}{c})" if c == "last_modified_at" else f"{c} := {p}{c}" for c in TRACKED
    )
    return f"md5(to_json(struct_pack({parts})))"


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


def upgrade_history(con: duckdb.DuckDBPyConnection) -> int:
    """Fill document_type, status_category and freight_amount on versions an earlier release recorded,
    and bring their amounts to the signs and tax of the upgraded main.invoices (upgrade.py), so the
    upgrade itself adds no version. Returns the versions filled.

    document_type and freight come from the invoice's current row; status_category from the version's
    own status and balance; a SoftwareOne credit's versions are negated (the release before sent them
    as the source does, positive); the version of the current source version takes the current net
    and tax (e.g. a CRM.COM tax now read from the item's own tax_amount). The hash is recomputed.
    """
    from invoice_pipeline.upgrade import status_category_sql

    con.execute("""CREATE OR REPLACE TEMP TABLE _history_upgrade AS SELECT source_name, invoice_id, valid_from
                   FROM main.invoice_history WHERE document_type IS NULL""")
    n = con.execute("SELECT count(*) FROM _history_upgrade").fetchone()[0]
    if n:
        credit = "i.source_type = 'softwareone' AND i.document_type = 'credit_memo'"  # sent positive before
        same = "h.last_modified_at IS NOT DISTINCT FROM i.last_modified_at"  # the current source version
        con.execute(
            f"""UPDATE main.invoice_history AS h SET
                document_type = i.document_type,
                status_category = {status_category_sql('i.source_type', 'h.status', 'CASE WHEN ' + credit + ' THEN -h.balance_due ELSE h.balance_due END', 'h.is_void')},
                freight_amount = i.freight_amount,
                net_amount = CASE WHEN {same} THEN i.net_amount WHEN {credit} THEN -h.net_amount ELSE h.net_amount END,
                tax_amount = CASE WHEN {same} THEN i.tax_amount WHEN {credit} THEN -h.tax_amount ELSE h.tax_amount END,
                total_amount = CASE WHEN {credit} THEN -h.total_amount ELSE h.total_amount END,
                balance_due = CASE WHEN {credit} THEN -h.balance_due ELSE h.balance_due END
            FROM main.invoices AS i
            WHERE h.document_type IS NULL AND i.source_name = h.source_name AND i.invoice_id = h.invoice_id"""
        )
        # Versions of invoices no longer in main.invoices: what their own columns say.
        con.execute(
            """UPDATE main.invoice_history SET document_type = CASE WHEN total_amount < 0 THEN 'credit_memo' ELSE 'invoice' END,
                status_category = CASE WHEN coalesce(is_void, false) THEN 'void' WHEN balance_due = 0 THEN 'paid' ELSE 'open' END,
                freight_amount = 0
            WHERE document_type IS NULL"""
        )
        scope = """FROM _history_upgrade AS u WHERE u.source_name = h.source_name AND u.invoice_id = h.invoice_id
                   AND u.valid_from = h.valid_from"""
        con.execute(f"UPDATE main.invoice_history AS h SET is_void = (h.status_category = 'void') {scope}")
        con.execute(f"UPDATE main.invoice_history AS h SET version_hash = {version_hash_sql('h')} {scope}")
    con.execute("DROP TABLE _history_upgrade")
    return n


def _prepare(wh: Warehouse, con: duckdb.DuckDBPyConnection) -> None:
    """The conformed tables (a one-query no-op when they are this release's; otherwise created, or
    upgraded in place before any history step reads columns an earlier release lacked) and ours."""
    wh.ensure_main(con)
    ensure_lifecycle_tables(con)


# -- history ---------------------------------------------------------------------------------------
HISTORY_VALUE_COLUMNS = [c for c in HISTORY_COLUMNS if c not in ("valid_from", "valid_to", "observed_at", "run_id",
                                                                  "version_hash")]


def _history_candidates_sql(con: duckdb.DuckDBPyConnection) -> str:
    """The invoice_id of every main.invoices row of source $src whose version may differ from its
    current history version; reads only narrow columns, no version hash.

    A row can only differ from its current history version if
    - it has none (first load, a history table newer than the data, a lost current version);
    - its is_deleted differs: deletion marking (_mark_deleted) and step 1 of _record_history
      UPDATE main.invoices without writing a new _loaded_at/_run_id;
    - or it was written by a run that has not finished successfully. Every other write (merge,
      replay) rewrites the whole row with the writing run's _run_id, and run_source records a run
      as 'success' in main._pipeline_runs only after that run's own history step, which ran after
      its last write committed: a row still holding such a run's _run_id was examined after its
      last write (replay.py records its run the same way, after its history step). The run now
      finishing, a failed, killed or still running one (a crashed run's committed batches) and rows
      loaded before the run log existed stay candidates, so the version hash decides for them as before.
    Why not compare _loaded_at with observed_at: it is the run's start time cut to whole seconds
    (run_source, replay), so two runs in one second write the same value, and all batches of one
    run share it (a history step of another process between two batches of a run that rewrote an
    invoice would hide the second write). And an unchanged rewrite (a re-poll, an overlapping
    window, a re-run) adds no version, so its row would differ from observed_at forever and stay
    a candidate on every later sync: cost would grow with everything ever re-read, not with change.
    """
    succeeded = ("SELECT DISTINCT run_id FROM main._pipeline_runs WHERE source_name = $src AND status = 'success'"
                 if _existing_columns(con, "_pipeline_runs")
                 else "SELECT NULL::VARCHAR AS run_id WHERE false")  # before the run log: nothing is known examined
    return f"""SELECT i.invoice_id FROM main.invoices AS i
        LEFT JOIN (SELECT invoice_id, is_deleted FROM main.invoice_history
                   WHERE source_name = $src AND valid_to IS NULL) AS h ON h.invoice_id = i.invoice_id
        LEFT JOIN ({succeeded}) AS r ON r.run_id = i._run_id
        WHERE i.source_name = $src
          AND (h.invoice_id IS NULL OR i.is_deleted IS DISTINCT FROM h.is_deleted OR r.run_id IS NULL)"""


def history_candidates(con: duckdb.DuckDBPyConnection, source_name: str) -> int:
    """How many invoices of the source the history step would examine now (version hash and diff);
    0 when main.invoice_history is known to be up to date. See _history_candidates_sql."""
    return con.execute(f"SELECT count(*) FROM ({_history_candidates_sql(con)})", {"src": source_name}).fetchall()[0][0]


def _record_history(con: duckdb.DuckDBPyConnection, source_name: str, run_id: str | None) -> int:
    """The body of record_history, inside the caller's transaction.

    Costs what changed, not the warehouse: the version hash, the diff and the stage cover only
    the candidates (_history_candidates_sql); the hash comparison still decides what is a new
    version, so the result is the one a full comparison would give.
    """
    # 1. A deletion mark lost by a reload that is not a genuine new observation (replay rebuilds
    #    rows from raw payloads with is_deleted = false) is restored from the history. A row loaded
    #    by this run, or with a newer last-modified time, is a real sighting: it stays un-deleted.
    con.execute(
        """UPDATE main.invoices AS i SET is_deleted = true, deleted_detected_at = h.deleted_detected_at
        FROM main.invoice_history AS h
        WHERE i.source_name = $src AND h.source_name = i.source_name AND h.invoice_id = i.invoice_id
          AND h.valid_to IS NULL AND h.is_deleted AND NOT coalesce(i.is_deleted, false)
          AND i.last_modified_at <= h.last_modified_at AND i._run_id IS DISTINCT FROM $run_id""",
        {"src": source_name, "run_id": run_id},
    )
    # 2. The candidates, cheaply (after step 1, whose restored marks they must see).
    con.execute(f"CREATE OR REPLACE TEMP TABLE _history_candidates AS {_history_candidates_sql(con)}",
                {"src": source_name})
    examined = con.execute("SELECT count(*) FROM _history_candidates").fetchall()[0][0]
    added = 0
    if examined:
        added = _stage_and_insert_versions(con, source_name)
    con.execute("DROP TABLE _history_candidates")
    log.debug("source '%s': history examined %d candidate invoices, added %d versions", source_name, examined, added)
    return added


def _stage_and_insert_versions(con: duckdb.DuckDBPyConnection, source_name: str) -> int:
    """3. Candidates whose version differs from the current history row (or that have none) are new versions."""
    values = ", ".join(f"c.{c}" for c in HISTORY_VALUE_COLUMNS)
    cur_columns = ", ".join(HISTORY_VALUE_COLUMNS)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _history_stage AS
        WITH cur AS (
            SELECT {cur_columns}, _loaded_at, _run_id, {version_hash_sql()} AS version_hash FROM main.invoices
            WHERE source_name = $src AND invoice_id IN (SELECT invoice_id FROM _history_candidates)),
        prev AS (
            SELECT invoice_id, valid_from, last_modified_at, is_deleted, version_hash
            FROM main.invoice_history WHERE source_name = $src AND valid_to IS NULL
              AND invoice_id IN (SELECT invoice_id FROM _history_candidates))
        SELECT {values}, c.version_hash, c._loaded_at AS observed_at, c._run_id AS run_id,
          CASE WHEN p.invoice_id IS NULL THEN coalesce(c.last_modified_at, c._loaded_at)
          ELSE greatest(p.valid_from + INTERVAL 1 MICROSECOND,
            CASE WHEN c.is_deleted AND NOT coalesce(p.is_deleted, false) THEN coalesce(c.deleted_detected_at, c._loaded_at)
                 WHEN c.last_modified_at > p.last_modified_at THEN c.last_modified_at
                 ELSE c._loaded_at END)
          END AS valid_from
        FROM cur c LEFT JOIN prev p ON p.invoice_id = c.invoice_id
        WHERE p.invoice_id IS NULL OR p.version_hash <> c.version_hash""",
        {"src": source_name},
    )
    added = con.execute("SELECT count(*) FROM _history_stage").fetchall()[0][0]
    if added:
        con.execute(
            """UPDATE main.invoice_history AS h SET valid_to = n.valid_from FROM _history_stage AS n
            WHERE h.source_name = $src AND h.invoice_id = n.invoice_id AND h.valid_to IS NULL""",
            {"src": source_name},
        )
        con.execute("INSERT INTO main.invoice_history BY NAME SELECT *, NULL::TIMESTAMPTZ AS valid_to FROM _history_stage")
    con.execute("DROP TABLE _history_stage")
    return added


def record_history(
    wh: Warehouse, source_name: str, run_id: str | None = None, con: duckdb.DuckDBPyConnection | None = None
) -> int:
    """Bring main.invoice_history up to date with main.invoices for one source; returns versions added.

    run_id: the run that just loaded (its rows are genuine sightings, see step 1). With `con`,
    runs inside the caller's open transaction; otherwise takes the writer lock and commits.
    """
    if con is not None:
        return _record_history(con, source_name, run_id)
    with wh.writer() as own:
        _prepare(wh, own)
        own.execute("BEGIN TRANSACTION")
        try:
            added = _record_history(own, source_name, run_id)
            own.execute("COMMIT")
        except BaseException:
            rollback(own)
            raise
    if added:
        log.info("source '%s': %d invoice versions added to main.invoice_history", source_name, added)
    return added


HISTORY_RULES: dict[str, str] = {
    "history_overlap": "a version starts before the previous one ended (or after a current version)",
    "history_gap": "a version starts after the previous one ended",
    "history_empty_interval": "valid_to is not after valid_from",
    "history_no_current_version": "every version of the invoice is closed",
}


def history_violations(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> tuple[int, list[tuple[str, str, str, str]]]:
    """(count, first rows as (rule, source, invoice, detail)) of gaps/overlaps in main.invoice_history."""
    query = """
        WITH h AS (
          SELECT source_name, invoice_id, valid_from, valid_to,
            lead(valid_from) OVER w AS next_from,
            count(*) FILTER (WHERE valid_to IS NULL) OVER (PARTITION BY source_name, invoice_id) AS n_current,
            row_number() OVER w AS n
          FROM main.invoice_history
          WINDOW w AS (PARTITION BY source_name, invoice_id ORDER BY valid_from, valid_to NULLS LAST))
        SELECT 'history_overlap', source_name, invoice_id,
               'version from ' || valid_from || ' to ' || coalesce(valid_to::VARCHAR, 'now') || ', next from ' || next_from
          FROM h WHERE next_from IS NOT NULL AND (valid_to IS NULL OR next_from < valid_to)
        UNION ALL
        SELECT 'history_gap', source_name, invoice_id, 'version ends ' || valid_to || ', next starts ' || next_from
          FROM h WHERE next_from > valid_to
        UNION ALL
        SELECT 'history_empty_interval', source_name, invoice_id, 'from ' || valid_from || ' to ' || valid_to
          FROM h WHERE valid_to <= valid_from
        UNION ALL
        SELECT 'history_no_current_version', source_name, invoice_id, 'last version ends ' || valid_to
          FROM h WHERE n_current = 0 AND next_from IS NULL
    """
    total = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
    rows = con.execute(f"{query} ORDER BY 2, 3" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    return total, [cast(tuple[str, str, str, str], tuple(r)) for r in rows]


def history_out_of_sync(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Invoices whose current history version is not what main.invoices holds (history not yet
    maintained after a load, or deletion marks lost by a replay)."""
    query = f"""
        SELECT i.source_name, i.invoice_id FROM main.invoices i
        LEFT JOIN main.invoice_history h
          ON h.source_name = i.source_name AND h.invoice_id = i.invoice_id AND h.valid_to IS NULL
        WHERE h.invoice_id IS NULL OR h.version_hash <> {version_hash_sql('i')}"""
    total = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
    rows = con.execute(f"{query} ORDER BY 1, 2" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    return total, [(r[0], r[1]) for r in rows]


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
