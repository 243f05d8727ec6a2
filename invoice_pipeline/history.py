"""The history of every invoice version (main.invoice_history), brought up to date after every load.

Below pipeline.py (each load records its versions) and the lifecycle package (re-poll, deletions,
aging), which read and write through it. History: one row per observed version of each invoice,
valid from `valid_from` (inclusive) to `valid_to` (exclusive; NULL = the current version),
contiguous and never overlapping. `record_history` derives it from `main.invoices` and is
idempotent: a re-run, an overlapping window, a backfill whose older version the merge rejected and
a replay add nothing.
"""

from __future__ import annotations

import logging
from typing import cast

import duckdb

from invoice_pipeline.lifecycle_tables import (HISTORY_COLUMNS, VALID_FROM_SQL, _existing_columns, ensure_lifecycle_tables,
                                                version_hash_sql)
from invoice_pipeline.sql import rollback
from invoice_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)


def ensure_history_tables(wh: Warehouse, con: duckdb.DuckDBPyConnection) -> None:
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
    - its is_deleted differs: deletion marking (lifecycle/deletions.py) and step 1 of
      _record_history UPDATE main.invoices without writing a new _loaded_at/_run_id;
    - or it was written by a run that has not finished successfully. Every other write (merge,
      replay) rewrites the whole row with the writing run's _run_id, and every load (pipeline.py:
      runs, re-polls, reconciliations, replays) records a run as 'success' in main._pipeline_runs
      only after that run's own history step, which ran after its last write committed: a row
      still holding such a run's _run_id was examined after its last write. The run now
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
          {VALID_FROM_SQL} AS valid_from
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
        ensure_history_tables(wh, own)
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


def history_violations(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> tuple[int, list[tuple[str, str, str, str]]]:
    """(count, first rows as (rule, source, invoice, detail)) of gaps/overlaps in main.invoice_history.

    Rules: history_overlap (a version starts before the previous one ended, or after a current
    version), history_gap (starts after the previous one ended), history_empty_interval (valid_to
    not after valid_from), history_no_current_version (every version of the invoice is closed)."""
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
