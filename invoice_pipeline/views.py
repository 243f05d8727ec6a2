"""Analyst views over the conformed model, created in the working database and the published snapshot."""

from __future__ import annotations

import duckdb

from invoice_pipeline.sql import sql_literal

# name -> (description, SQL); unqualified table names so the views work in the snapshot file too.
ANALYST_VIEWS: dict[str, tuple[str, str]] = {
    "ar_open_items": (
        "Open receivable items: installments with a balance due on invoices that are neither void nor deleted at "
        "the source, with days overdue as of today (0 when not yet due; due_date falls back to the invoice date, "
        "days_overdue is null when there is neither).",
        """SELECT i.source_name, i.source_type, i.invoice_id, i.invoice_number, i.customer_id, i.customer_name,
                  i.currency_code, n.installment_id, n.installment_number,
                  coalesce(n.due_date, i.due_date, i.invoice_date) AS due_date, n.original_amount, n.balance_due,
                  greatest(current_date - coalesce(n.due_date, i.due_date, i.invoice_date), 0)::INTEGER AS days_overdue
           FROM invoice_installments n JOIN invoices i USING (source_name, invoice_id)
           WHERE NOT i.is_void AND NOT coalesce(i.is_deleted, false) AND n.balance_due <> 0""",
    ),
    "ar_aging": (
        "Accounts-receivable aging by source, customer, currency and bucket (current, 1-30, 31-60, 61-90, 90+ "
        "days overdue; items without a due date count as current), from ar_open_items; bucket_order sorts the buckets.",
        """SELECT source_name, customer_id, customer_name, currency_code,
                  CASE WHEN coalesce(days_overdue, 0) = 0 THEN 'current' WHEN days_overdue <= 30 THEN '1-30'
                       WHEN days_overdue <= 60 THEN '31-60' WHEN days_overdue <= 90 THEN '61-90' ELSE '90+' END
                    AS aging_bucket,
                  CASE WHEN coalesce(days_overdue, 0) = 0 THEN 0 WHEN days_overdue <= 30 THEN 1
                       WHEN days_overdue <= 60 THEN 2 WHEN days_overdue <= 90 THEN 3 ELSE 4 END AS bucket_order,
                  count(*) AS open_items, sum(balance_due) AS balance_due
           FROM ar_open_items GROUP BY ALL""",
    ),
    "revenue_by_month": (
        "Invoiced amounts by source, currency and invoice month, void and deleted invoices excluded "
        "(net = lines, tax = tax lines).",
        """SELECT source_name, currency_code, date_trunc('month', invoice_date)::DATE AS invoice_month,
                  count(*) AS invoices, sum(net_amount) AS net_amount, sum(tax_amount) AS tax_amount,
                  sum(total_amount) AS total_amount
           FROM invoices WHERE NOT is_void AND NOT coalesce(is_deleted, false) GROUP BY ALL""",
    ),
}


def create_analyst_views(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> None:
    """Create (or replace) every analyst view with its COMMENT, so the dictionary and BI tools show it."""
    prefix = f"{catalog}.main." if catalog else "main."
    for name, (description, sql) in ANALYST_VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {prefix}{name} AS {sql}")
        con.execute(f"COMMENT ON VIEW {prefix}{name} IS {sql_literal(description)}")
