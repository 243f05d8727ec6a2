"""Audit checks over the conformed model, as plain SQL rules: each returns the offending rows.

Used by the Dagster asset checks (blocking ones stop the publish step), `invoice-pipeline status` and
tests. Not to be confused with deletion reconciliation (`lifecycle.reconcile_deletions`,
`invoice-pipeline reconcile`), which compares the warehouse with the source. The analysts' view of the
failures keeps its published name, `main.reconciliation_exceptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from invoice_pipeline.config import AppConfig
from invoice_pipeline.conformed import CONFORMED_KEYS
from invoice_pipeline.sql import quote


@dataclass(frozen=True)
class AuditRule:
    name: str
    description: str
    sql: str  # selects source_name, invoice_id, detail
    blocking: bool = True


def _duplicate_rule(table: str) -> AuditRule:
    keys = CONFORMED_KEYS[table]
    return AuditRule(
        f"unique_{table}",
        f"({', '.join(keys)}) is unique in main.{table}",
        f"SELECT source_name, invoice_id, 'duplicate key, ' || count(*) || ' rows' AS detail "
        f"FROM main.{table} GROUP BY {', '.join(keys)} HAVING count(*) > 1",
    )


def _orphan_rule(table: str) -> AuditRule:
    return AuditRule(
        f"orphans_{table}",
        f"every row of main.{table} has its invoice",
        f"SELECT c.source_name, c.invoice_id, 'no invoice for this {table[8:-1]}' AS detail FROM main.{table} c "
        f"ANTI JOIN main.invoices i ON i.source_name = c.source_name AND i.invoice_id = c.invoice_id",
    )


RULES: list[AuditRule] = [
    *(_duplicate_rule(t) for t in CONFORMED_KEYS),
    *(_orphan_rule(t) for t in ("invoice_lines", "invoice_tax_lines", "invoice_installments")),
    AuditRule(
        "lines_plus_tax_equal_total",
        "sum(line_amount) + sum(tax_amount) + freight_amount = total_amount per invoice, within 0.01 per line "
        "(truncated invoices exempt)",
        """SELECT i.source_name, i.invoice_id,
               'lines ' || i.net_amount || ' + tax ' || i.tax_amount || ' + freight ' || coalesce(i.freight_amount, 0)
               || ' <> total ' || i.total_amount AS detail
           FROM main.invoices i
           LEFT JOIN (SELECT source_name, invoice_id, count(*) AS n FROM main.invoice_lines GROUP BY ALL) l
             USING (source_name, invoice_id)
           WHERE NOT i.is_truncated
             AND abs(i.net_amount + i.tax_amount + coalesce(i.freight_amount, 0) - i.total_amount)
                 > 0.01 * greatest(coalesce(l.n, 0), 1)""",
    ),
    AuditRule(
        "installments_equal_total",
        "sum(installment original_amount) = total_amount per invoice (truncated invoices exempt)",
        """SELECT i.source_name, i.invoice_id,
               'installments ' || coalesce(s.amount, 0) || ' <> total ' || i.total_amount AS detail
           FROM main.invoices i
           LEFT JOIN (SELECT source_name, invoice_id, sum(original_amount) AS amount
                      FROM main.invoice_installments GROUP BY ALL) s USING (source_name, invoice_id)
           WHERE NOT i.is_truncated AND abs(coalesce(s.amount, 0) - i.total_amount) > 0.01""",
    ),
    AuditRule(
        "balance_not_above_total",
        "balance_due <= total_amount for invoices with a non-negative total; for a credit (negative total) the "
        "balance is no further below zero than the total",
        """SELECT source_name, invoice_id, 'balance ' || balance_due || ' beyond total ' || total_amount AS detail
           FROM main.invoices
           WHERE (total_amount >= 0 AND balance_due > total_amount) OR (total_amount < 0 AND balance_due < total_amount)""",
    ),
    AuditRule(
        "credit_memo_signs",
        "a credit memo's total_amount and balance_due are <= 0 (the conformed model holds what the customer owes)",
        """SELECT source_name, invoice_id,
               'credit memo with total ' || total_amount || ', balance ' || coalesce(balance_due::VARCHAR, 'null') AS detail
           FROM main.invoices WHERE document_type = 'credit_memo' AND (total_amount > 0 OR balance_due > 0)""",
        blocking=False,
    ),
    AuditRule(
        "truncated_invoices",
        "invoices whose source returned an incomplete child collection",
        "SELECT source_name, invoice_id, 'source returned an incomplete child collection' AS detail "
        "FROM main.invoices WHERE is_truncated",
        blocking=False,
    ),
]


EXCEPTION_COLUMNS = {
    "rule": "Name of the failed audit rule (also the Dagster asset check).",
    "blocking": "true: the rule stops publishing; false: a warning.",
    "source_name": "Configured source name.",
    "invoice_id": "The offending invoice (main.invoices).",
    "detail": "What is wrong, with the amounts involved.",
}


def violations(con: duckdb.DuckDBPyConnection, rule: AuditRule, limit: int | None = None) -> list[tuple[str, str, str]]:
    sql = f"SELECT * FROM ({rule.sql}) ORDER BY 1, 2, 3" + (f" LIMIT {int(limit)}" if limit else "")
    return con.execute(sql).fetchall()


def violations_by_rule(
    con: duckdb.DuckDBPyConnection, names: list[str], limit: int = 10
) -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
    """rule -> (violations, the first `limit` as violations() orders them), every rule in one query
    over main.reconciliation_exceptions (create_exceptions_view) instead of two queries per rule."""
    rows = con.execute(
        """SELECT rule, count(*), list([source_name, invoice_id, detail] ORDER BY source_name, invoice_id, detail)[1:$limit]
        FROM main.reconciliation_exceptions WHERE list_contains($names, rule) GROUP BY rule""",
        {"names": names, "limit": int(limit)},
    ).fetchall()
    found = {rule: (total, [tuple(v) for v in first]) for rule, total, first in rows}
    return {name: found.get(name, (0, [])) for name in names}


def create_exceptions_view(con: duckdb.DuckDBPyConnection) -> None:
    """main.reconciliation_exceptions: every row that fails an audit rule, queryable by analysts (the view's
    name is published: BI queries use it)."""
    parts = [f"SELECT '{r.name}' AS rule, {str(r.blocking).upper()} AS blocking, * FROM ({r.sql})" for r in RULES]
    con.execute("CREATE OR REPLACE VIEW main.reconciliation_exceptions AS " + " UNION ALL ".join(parts))
    con.execute(
        "COMMENT ON VIEW main.reconciliation_exceptions IS 'Every invoice failing an audit check of the conformed model: rule name, "
        "whether it blocks publishing, source_name, invoice_id and what is wrong.'"
    )
    for column, text in EXCEPTION_COLUMNS.items():
        con.execute(f"COMMENT ON COLUMN main.reconciliation_exceptions.{column} IS '{text}'")


def stale_sources(con: duckdb.DuckDBPyConnection, app: AppConfig, now: datetime) -> list[tuple[str, str]]:
    """(source, why) for every configured source whose cursor is older than its max_staleness."""
    cursors = dict(con.execute("SELECT source_name, cursor_at FROM main._pipeline_cursors").fetchall())
    stale = []
    for name, cfg in app.sources.items():
        cursor = cursors.get(name)
        if cursor is None:
            stale.append((name, "never loaded successfully"))
        elif now - cursor > cfg.max_staleness:
            stale.append((name, f"cursor {cursor.isoformat()} older than {cfg.max_staleness}"))
    return stale


def quarantined(con: duckdb.DuckDBPyConnection, sources: list[str]) -> dict[str, list[tuple[str | None, str]]]:
    """Quarantined records per source: (invoice_id, reason), newest first."""
    out: dict[str, list[tuple[str | None, str]]] = {}
    for name in sources:
        exists = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = '_quarantine'", [name]
        ).fetchone()[0]
        if exists:
            rows = con.execute(
                f"SELECT invoice_id, reason FROM {quote(name)}._quarantine ORDER BY detected_at DESC, invoice_id"
            ).fetchall()
            if rows:
                out[name] = rows
    return out
