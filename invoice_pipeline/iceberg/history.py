"""main.invoice_history in Iceberg: one row per observed version of an invoice, valid_from inclusive to
valid_to exclusive (NULL = current), the columns and rules of the DuckDB backend's history.py.

Brought up to date per batch, right after the batch's invoices commit (run.py): the batch's keys are
read back from `main.invoices` on `ingest` and compared by version hash (lifecycle_tables.version_hash_sql)
with their current history rows; a changed or new invoice closes its current row (valid_to = the new
valid_from) and gets a new current row, in ONE commit (delete the current rows, append closed + new),
retried on a conflict from a fresh read, like every merge (merge.py). An unchanged re-read adds nothing.

A run killed after the invoices committed and before the history did leaves the history behind the
invoice; the audit's `history_matches_invoices` rule (blocking here) refuses to publish until the
re-run of the same window (the cursor did not move) records the version.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
from pyiceberg.expressions import And, EqualTo, In, IsNull
from pyiceberg.table import Table

from invoice_pipeline.audit import AuditRule
from invoice_pipeline.iceberg.catalog import HISTORY, HISTORY_SCHEMA, INGEST
from invoice_pipeline.iceberg.merge import _scan_ref, with_retries
from invoice_pipeline.lifecycle_tables import HISTORY_COLUMNS, VALID_FROM_SQL, version_hash_sql

VALUE_COLUMNS = [c for c in HISTORY_COLUMNS if c not in ("valid_from", "valid_to", "observed_at", "run_id", "version_hash")]


def record_history_batch(history: Table, invoices: Table, source: str, ids: list[str], retries: int) -> tuple[int, int]:
    """New versions of these invoices of `source` into the history on `ingest`: (versions added, conflicts)."""
    added = 0
    if not ids:
        return 0, 0

    def attempt() -> None:
        nonlocal added
        history.refresh()
        invoices.refresh()
        keys = And(EqualTo("source_name", source), In("invoice_id", ids))
        cur = _scan_ref(invoices, keys, (*VALUE_COLUMNS, "_loaded_at", "_run_id"))
        prev = _scan_ref(history, And(keys, IsNull("valid_to")), tuple(HISTORY_SCHEMA.names))
        con = duckdb.connect()
        try:
            con.register("cur_rows", cur)
            con.register("prev", prev)
            con.execute(f"""CREATE TABLE stage AS
                WITH cur AS (SELECT *, {version_hash_sql()} AS version_hash FROM cur_rows)
                SELECT {', '.join(f'c.{c}' for c in VALUE_COLUMNS)}, c.version_hash, c._loaded_at AS observed_at,
                  c._run_id AS run_id,
                  {VALID_FROM_SQL} AS valid_from
                FROM cur c LEFT JOIN prev p USING (invoice_id)
                WHERE p.invoice_id IS NULL OR p.version_hash <> c.version_hash""")
            names = ", ".join(HISTORY_SCHEMA.names)
            new = con.execute(f"SELECT {names} FROM (SELECT *, NULL::TIMESTAMPTZ AS valid_to FROM stage)").to_arrow_table()
            closed = con.execute(f"""SELECT {names} FROM (SELECT p.* REPLACE (s.valid_from AS valid_to)
                FROM prev p JOIN (SELECT invoice_id, valid_from FROM stage) s USING (invoice_id))""").to_arrow_table()
        finally:
            con.close()
        added = new.num_rows
        if not added:
            return
        new, closed = new.cast(HISTORY_SCHEMA), closed.cast(HISTORY_SCHEMA)
        with history.transaction() as tx:
            replaced = closed.column("invoice_id").to_pylist()
            if replaced:
                tx.delete(And(And(EqualTo("source_name", source), In("invoice_id", replaced)), IsNull("valid_to")),
                          branch=INGEST)
            tx.append(pa.concat_tables([closed, new]), branch=INGEST)

    conflicts = with_retries(f"table main.{HISTORY} (source '{source}')", attempt, retries)
    return added, conflicts


# Audit rules over main.invoice_history (registered next to main.invoices by publish.audit_rules).
HISTORY_RULES = [
    AuditRule(
        "history_contiguous",
        "per invoice, history versions follow each other without gap or overlap and exactly the last is current",
        """WITH h AS (
             SELECT source_name, invoice_id, valid_from, valid_to, lead(valid_from) OVER w AS next_from,
               count(*) FILTER (WHERE valid_to IS NULL) OVER (PARTITION BY source_name, invoice_id) AS n_current
             FROM main.invoice_history WINDOW w AS (PARTITION BY source_name, invoice_id ORDER BY valid_from, valid_to NULLS LAST))
           SELECT source_name, invoice_id, 'overlap: version from ' || valid_from || ' to '
                  || coalesce(valid_to::VARCHAR, 'now') || ', next from ' || next_from AS detail
             FROM h WHERE next_from IS NOT NULL AND (valid_to IS NULL OR next_from < valid_to)
           UNION ALL SELECT source_name, invoice_id, 'gap: version ends ' || valid_to || ', next starts ' || next_from
             FROM h WHERE next_from > valid_to
           UNION ALL SELECT source_name, invoice_id, 'empty interval from ' || valid_from || ' to ' || valid_to
             FROM h WHERE valid_to <= valid_from
           UNION ALL SELECT source_name, invoice_id, 'no current version, last ends ' || valid_to
             FROM h WHERE n_current = 0 AND next_from IS NULL""",
    ),
    AuditRule(
        "history_matches_invoices",
        "every invoice's current history version is what main.invoices holds (no history step lost)",
        f"""SELECT i.source_name, i.invoice_id, 'current history version differs from main.invoices' AS detail
            FROM main.invoices i LEFT JOIN main.invoice_history h
              ON h.source_name = i.source_name AND h.invoice_id = i.invoice_id AND h.valid_to IS NULL
            WHERE h.invoice_id IS NULL OR h.version_hash <> {version_hash_sql('i')}""",
    ),
]
