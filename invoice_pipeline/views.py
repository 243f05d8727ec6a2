"""Analyst views over the conformed model, created in the working database and the published snapshot.

They count only what is owed or earned: draft, void and deleted documents are left out, credit memos
are in (negative), and amounts are summed per currency only (every view groups by currency_code).
Rows that rest on truncated invoices (the source sent an incomplete child collection) say so.
"""

from __future__ import annotations

import duckdb

from invoice_pipeline.sql import quote, sql_literal

# What a document must be to count: neither draft nor void nor deleted at the source.
COUNTED = "i.status_category IN ('open', 'paid') AND NOT coalesce(i.is_deleted, false)"

# The aging buckets, in order, with the most days overdue each holds (None: no upper bound); an item
# without any due date (nor invoice date to fall back to) is in NO_DUE_DATE, sorted last. The one
# definition of the ar_aging view and the ar_aging_snapshot table (lifecycle/aging.py).
AGING_LIMITS: list[tuple[str, int | None]] = [("current", 0), ("1-30", 30), ("31-60", 60), ("61-90", 90), ("90+", None)]
NO_DUE_DATE = "no_due_date"
AGING_BUCKETS = [name for name, _ in AGING_LIMITS] + [NO_DUE_DATE]


def aging_bucket_sql(days_overdue: str) -> str:
    """The bucket of an item `days_overdue` (an SQL expression) days past due: <= 0 is current
    (not yet due), NULL (no date at all) is no_due_date."""
    whens = "".join(f" WHEN {days_overdue} <= {limit} THEN {sql_literal(name)}"
                    for name, limit in AGING_LIMITS if limit is not None)
    last = next(name for name, limit in AGING_LIMITS if limit is None)
    return f"CASE WHEN {days_overdue} IS NULL THEN {sql_literal(NO_DUE_DATE)}{whens} ELSE {sql_literal(last)} END"


def aging_bucket_order_sql(days_overdue: str) -> str:
    """0 .. len(AGING_BUCKETS) - 1: sorts the buckets of aging_bucket_sql (no_due_date last)."""
    buckets = "[" + ", ".join(sql_literal(b) for b in AGING_BUCKETS) + "]"
    return f"(list_position({buckets}, {aging_bucket_sql(days_overdue)}) - 1)::INTEGER"


_BUCKET_LIST = ", ".join(AGING_BUCKETS)

# name -> (description, SQL); unqualified table names so the views work in the snapshot file too.
ANALYST_VIEWS: dict[str, tuple[str, str]] = {
    "ar_open_items": (
        "Open receivable items: installments with a balance due (credit memos negative) of documents that are "
        "neither draft, void nor deleted at the source, with days overdue as of today (0 when not yet due; "
        "due_date falls back to the invoice date, days_overdue is null when there is neither). Never sum "
        "balance_due across currency_code.",
        f"""SELECT i.source_name, i.source_type, i.invoice_id, i.invoice_number, i.document_type, i.status_category,
                  i.customer_id, i.customer_name, i.currency_code, n.installment_id, n.installment_number,
                  coalesce(n.due_date, i.due_date, i.invoice_date) AS due_date, n.original_amount, n.balance_due,
                  CASE WHEN coalesce(n.due_date, i.due_date, i.invoice_date) IS NOT NULL
                    THEN greatest(current_date - coalesce(n.due_date, i.due_date, i.invoice_date), 0) END::INTEGER
                    AS days_overdue,
                  i.is_truncated
           FROM invoice_installments n JOIN invoices i USING (source_name, invoice_id)
           WHERE {COUNTED} AND n.balance_due <> 0""",
    ),
    "ar_aging": (
        "Accounts-receivable aging by source, customer, currency and bucket (current = not yet due, 1-30, 31-60, "
        "61-90, 90+ days overdue, no_due_date = neither due nor invoice date; the buckets of ar_aging_snapshot), "
        "from ar_open_items: drafts, voids and deleted documents left out, credit memos netted in (negative); "
        "bucket_order sorts the buckets; truncated_invoices counts the invoices in the row whose source sent "
        "incomplete lines.",
        f"""SELECT source_name, customer_id, customer_name, currency_code,
                  {aging_bucket_sql("days_overdue")} AS aging_bucket,
                  {aging_bucket_order_sql("days_overdue")} AS bucket_order,
                  count(*) AS open_items, sum(balance_due) AS balance_due,
                  count(*) FILTER (WHERE document_type = 'credit_memo') AS credit_memo_items,
                  count(DISTINCT invoice_id) FILTER (WHERE is_truncated) AS truncated_invoices
           FROM ar_open_items GROUP BY ALL""",
    ),
    "revenue_by_month": (
        "Invoiced amounts by source, currency and invoice month: drafts, voids and deleted documents left out, "
        "credit memos included (negative); net = lines, tax = tax lines, total = net + tax + freight; "
        "truncated_invoices counts the documents whose source sent incomplete lines (their net and tax fall short).",
        f"""SELECT i.source_name, i.currency_code, date_trunc('month', i.invoice_date)::DATE AS invoice_month,
                  count(*) AS invoices, count(*) FILTER (WHERE i.document_type = 'credit_memo') AS credit_memos,
                  sum(i.net_amount) AS net_amount, sum(i.tax_amount) AS tax_amount,
                  sum(i.freight_amount) AS freight_amount, sum(i.total_amount) AS total_amount,
                  count(*) FILTER (WHERE i.is_truncated) AS truncated_invoices
           FROM invoices i WHERE {COUNTED} GROUP BY ALL""",
    ),
}

# view -> column -> description (COMMENT ON COLUMN, so the dictionary and BI tools show them)
VIEW_COLUMNS: dict[str, dict[str, str]] = {
    "ar_open_items": {
        "source_name": "Configured source name.",
        "source_type": "Source system type.",
        "invoice_id": "Source key of the document (main.invoices).",
        "invoice_number": "As in main.invoices.",
        "document_type": "invoice, credit_memo (balance negative), debit_memo or other.",
        "status_category": "open or paid (drafts and voids are not receivables).",
        "customer_id": "As in main.invoices.",
        "customer_name": "As in main.invoices.",
        "currency_code": "Currency of original_amount and balance_due: sum only within one currency.",
        "installment_id": "As in main.invoice_installments.",
        "installment_number": "As in main.invoice_installments.",
        "due_date": "Installment due date, else the invoice's due date, else its invoice date.",
        "original_amount": "Installment amount (negative for a credit memo).",
        "balance_due": "Still owed on the installment (negative: a credit the customer holds).",
        "days_overdue": "Days past due_date as of today, 0 when not yet due, null without any date.",
        "is_truncated": "The source sent an incomplete child collection for this document.",
    },
    "ar_aging": {
        "source_name": "Configured source name.",
        "customer_id": "As in main.invoices.",
        "customer_name": "As in main.invoices.",
        "currency_code": "Currency of balance_due (never mixed).",
        "aging_bucket": f"Days overdue as of today, one of: {_BUCKET_LIST} (no due date nor invoice date).",
        "bucket_order": f"0 to {len(AGING_BUCKETS) - 1}: sorts the buckets ({_BUCKET_LIST}).",
        "open_items": "Open installments in the bucket (credit memos included).",
        "balance_due": "Net balance of the bucket: invoices minus open credits, in currency_code.",
        "credit_memo_items": "Of open_items, how many are credit memos.",
        "truncated_invoices": "Invoices in this row whose source sent incomplete lines or installments.",
    },
    "revenue_by_month": {
        "source_name": "Configured source name.",
        "currency_code": "Currency of the amounts (never mixed).",
        "invoice_month": "First day of the invoice month.",
        "invoices": "Documents counted: invoices, debit memos and credit memos (neither draft, void nor deleted).",
        "credit_memos": "Of invoices, how many are credit memos (their amounts are negative).",
        "net_amount": "Sum of net_amount (lines).",
        "tax_amount": "Sum of tax_amount (tax lines).",
        "freight_amount": "Sum of freight_amount.",
        "total_amount": "Sum of total_amount (= net + tax + freight for complete documents).",
        "truncated_invoices": "Documents whose source sent incomplete lines: net and tax may fall short of total.",
    },
}


def create_analyst_views(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> None:
    """Create (or replace) every analyst view with its COMMENTs, so the dictionary and BI tools show them."""
    prefix = f"{catalog}.main." if catalog else "main."
    for name, (description, sql) in ANALYST_VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {prefix}{name} AS {sql}")
        con.execute(f"COMMENT ON VIEW {prefix}{name} IS {sql_literal(description)}")
        for column, text in VIEW_COLUMNS.get(name, {}).items():
            con.execute(f"COMMENT ON COLUMN {prefix}{name}.{quote(column)} IS {sql_literal(text)}")


# Days overdue of a history version on the snapshot's day (undated: NULL, bucket no_due_date).
DAYS_OVERDUE_AT_SNAPSHOT = "date_diff('day', coalesce(due_date, invoice_date), $snapshot_date)"


def aging_snapshot_sql(source_filter: str = "") -> str:
    """The ar_aging_snapshot rows of $snapshot_date: the invoices open in main.invoice_history at
    $as_of, by source, customer, currency and bucket. One query for both backends (the DuckDB
    warehouse, the Iceberg history read through DuckDB); `source_filter` narrows the sources."""
    return f"""SELECT $snapshot_date::DATE AS snapshot_date, source_name, customer_id,
               arg_max(customer_name, valid_from) AS customer_name, currency_code,
               {aging_bucket_sql(DAYS_OVERDUE_AT_SNAPSHOT)} AS aging_bucket, count(*) AS invoice_count,
               sum(balance_due) AS balance_due, sum(total_amount) AS total_amount,
               count(*) FILTER (WHERE document_type = 'credit_memo') AS credit_memo_count,
               coalesce(sum(balance_due) FILTER (WHERE document_type = 'credit_memo'), 0) AS credit_balance,
               $as_of::TIMESTAMPTZ AS as_of, now() AS computed_at
        FROM main.invoice_history
        WHERE valid_from < $as_of AND (valid_to IS NULL OR valid_to >= $as_of)
          AND NOT coalesce(is_void, false) AND status_category IS DISTINCT FROM 'draft'
          AND NOT coalesce(is_deleted, false) AND balance_due <> 0 {source_filter}
        GROUP BY source_name, customer_id, currency_code, aging_bucket"""
