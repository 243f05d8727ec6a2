"""A warehouse written by the release before document types, status categories, freight, signed credits
and child currencies upgrades in place on the next run: no manual step, the new columns filled from
the kept raw payloads (or, without one, from the stored columns), history and checks consistent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from invoice_pipeline.history import history_out_of_sync, history_violations
from invoice_pipeline.audit import RULES, violations
from invoice_pipeline.warehouse import Warehouse

from . import api_docs_payloads as docs
from .conftest import make_app

SOURCES = {"ora": "oracle_occ", "crm": "crmcom", "swo": "softwareone", "agv": "agvance"}
# The conformed tables' columns as the release before wrote them (its DDL, in its order).
RELEASE_1_COLUMNS = {
    "invoices": ["source_name", "source_type", "invoice_id", "invoice_number", "status", "is_void", "is_truncated",
                 "is_deleted", "deleted_detected_at", "customer_id", "customer_name", "invoice_date", "due_date",
                 "currency_code", "net_amount", "tax_amount", "total_amount", "balance_due", "payment_terms",
                 "purchase_order", "created_at", "last_modified_at", "_loaded_at", "_run_id"],
    "invoice_lines": ["source_name", "invoice_id", "line_id", "line_number", "item_code", "description", "quantity",
                      "unit_of_measure", "unit_price", "line_amount"],
    "invoice_tax_lines": ["source_name", "invoice_id", "tax_line_id", "line_id", "tax_code", "tax_rate",
                          "taxable_amount", "tax_amount", "is_derived"],
    "invoice_installments": ["source_name", "invoice_id", "installment_id", "installment_number", "due_date",
                             "original_amount", "balance_due", "status", "is_derived"],
}
NEW_INVOICE_COLUMNS = ("document_type", "status_category", "freight_amount")
SWO_CREDIT = "(source_name = 'swo' AND invoice_id = 'CRN-123-456-789')"


def _agvance_credit() -> dict[str, Any]:
    return {
        "InvoiceDate": "03/07/2025", "InvoiceLocation": "002", "InvoiceNumber": "100046",
        "InvoiceRecordHeaderDetails": {
            "InvoiceGuid": "g", "CustomerID": "F1", "CustomerName": "Farm", "InvoiceTotal": -107.0, "SubTotal": -100.0,
            "TaxTotal": -7.0, "AmountPaid": 0, "BalanceDue": -107.0, "DueDate": "04/06/2025", "Terms": "Net 30",
            "Void": False, "LastModifiedUtc": "2025-03-08T14:05:09"},
        "InvoiceRecordLineItemDetails": [{"LineNumber": 1, "ProductID": "RET", "ProductName": "Return", "Quantity": -2,
                                          "UnitOfMeasure": "GAL", "UnitPrice": 50, "Extension": -100.0}],
        "InvoiceTaxCodeDetails": [{"LineNumber": 1, "TaxCode": "ST", "TaxRate": 7, "TaxableAmount": -100.0,
                                   "TaxAmount": -7.0}],
    }


PAYLOADS = {
    "ora": lambda: [docs.oracle_detail(), docs.oracle_freight_detail(), docs.oracle_credit_memo()],
    "crm": lambda: [*docs.crmcom_invoices(), docs.crmcom_tax_only(),
                    docs.crmcom_variant("I00000498", "REJ498", life_cycle_state="REJECTED")],
    "swo": lambda: [docs.softwareone_credit()],
    "agv": lambda: [_agvance_credit()],
}


def _load_all(tmp_path: Path):
    app = make_app(tmp_path, docs.source_blocks(SOURCES))
    for name in SOURCES:
        docs.load(app, name, PAYLOADS[name]())
    return app


def _downgrade_to_release_1(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite a warehouse into what the release before left: its columns, its (unsigned, tax-less) values."""
    # SoftwareOne credits were stored as sent (positive); CRM.COM tax-only items had no tax line;
    # REJECTED was not void.
    con.execute(f"UPDATE main.invoices SET total_amount = -total_amount, balance_due = -balance_due, "
                f"net_amount = -net_amount, tax_amount = -tax_amount WHERE {SWO_CREDIT}")
    con.execute(f"UPDATE main.invoice_lines SET line_amount = -line_amount, quantity = -quantity WHERE {SWO_CREDIT}")
    con.execute(f"UPDATE main.invoice_tax_lines SET tax_amount = -tax_amount, taxable_amount = -taxable_amount WHERE {SWO_CREDIT}")
    con.execute(f"UPDATE main.invoice_installments SET original_amount = -original_amount, balance_due = -balance_due "
                f"WHERE {SWO_CREDIT}")
    con.execute("DELETE FROM main.invoice_tax_lines WHERE source_name = 'crm' AND tax_line_id LIKE '%:tax'")
    con.execute("UPDATE main.invoices SET tax_amount = 0 WHERE source_name = 'crm' AND invoice_id = 'TAXONLY499'")
    con.execute("UPDATE main.invoices SET is_void = false WHERE source_name = 'crm' AND status = 'REJECTED'")
    con.execute(f"UPDATE main.invoice_history SET total_amount = -total_amount, balance_due = -balance_due, "
                f"net_amount = -net_amount, tax_amount = -tax_amount WHERE {SWO_CREDIT}")
    con.execute("UPDATE main.invoice_history SET tax_amount = 0 WHERE source_name = 'crm' AND invoice_id = 'TAXONLY499'")
    con.execute("UPDATE main.invoice_history SET is_void = false WHERE source_name = 'crm' AND status = 'REJECTED'")
    for column in NEW_INVOICE_COLUMNS:
        con.execute(f"ALTER TABLE main.invoices DROP COLUMN {column}")
        con.execute(f"ALTER TABLE main.invoice_history DROP COLUMN {column}")
    for table in ("invoice_lines", "invoice_tax_lines", "invoice_installments"):
        con.execute(f"ALTER TABLE main.{table} DROP COLUMN currency_code")
    for column in ("credit_memo_count", "credit_balance"):
        con.execute(f"ALTER TABLE main.ar_aging_snapshot DROP COLUMN IF EXISTS {column}")
    from invoice_pipeline.lifecycle_tables import version_hash_sql

    con.execute(f"UPDATE main.invoice_history SET version_hash = {version_hash_sql()}")
    con.execute("CREATE OR REPLACE TABLE main._pipeline_schema AS SELECT 'release-1' AS schema_key")
    # The views of the release before read only the columns it had.
    for view in ("ar_open_items", "ar_aging", "revenue_by_month", "reconciliation_exceptions"):
        con.execute(f"DROP VIEW IF EXISTS main.{view}")


def _dump(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict]]:
    out = {}
    for table in ("invoices", "invoice_lines", "invoice_tax_lines", "invoice_installments"):
        cur = con.execute(f"SELECT * FROM main.{table}")
        names = [d[0] for d in cur.description]
        rows = [{k: v for k, v in zip(names, r, strict=True) if k not in ("_loaded_at", "_run_id")} for r in cur.fetchall()]
        out[table] = sorted(rows, key=lambda r: repr(sorted(r.items())))
    return out


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE main.{table}").fetchall()]


def test_release_1_warehouse_upgrades_in_place_on_the_next_run(tmp_path: Path) -> None:
    fresh_app = _load_all(tmp_path / "fresh")
    with Warehouse(fresh_app.warehouse).reader() as con:
        want = _dump(con)

    app = _load_all(tmp_path / "old")
    wh = Warehouse(app.warehouse)
    with wh.writer() as con:
        _downgrade_to_release_1(con)
        assert {t: _columns(con, t) for t in RELEASE_1_COLUMNS} == RELEASE_1_COLUMNS
        # Agvance's raw payload gone: that invoice can only be filled from its stored columns.
        con.execute("DELETE FROM agv._raw_invoices")
        versions_before = con.execute("SELECT count(*) FROM main.invoice_history").fetchone()[0]

    docs.load(app, "ora", [])  # the next run: nothing new at the source

    with wh.reader() as con:
        for table in RELEASE_1_COLUMNS:
            assert set(RELEASE_1_COLUMNS[table]) < set(_columns(con, table))
        got = _dump(con)
        assert got == want
        invoices = {(r["source_name"], r["invoice_id"]): r for r in got["invoices"]}
        swo = invoices[("swo", "CRN-123-456-789")]
        assert (swo["document_type"], swo["total_amount"], swo["net_amount"]) == (
            "credit_memo", Decimal("-1140.0000"), Decimal("-950.0000"))
        assert invoices[("crm", "TAXONLY499")]["tax_amount"] == Decimal("6.9600")
        assert (invoices[("crm", "REJ498")]["status_category"], invoices[("crm", "REJ498")]["is_void"]) == ("void", True)
        assert invoices[("ora", "891371")]["freight_amount"] == Decimal("10.0000")
        assert invoices[("agv", "002-100046")]["document_type"] == "credit_memo"  # from its sign, no payload
        for rule in RULES:
            if rule.blocking:
                assert violations(con, rule) == [], rule.name
        # The history got the columns too, and the upgrade itself is no new version of anything.
        assert con.execute("SELECT count(*) FROM main.invoice_history").fetchone()[0] == versions_before
        assert con.execute("SELECT count(*) FROM main.invoice_history WHERE document_type IS NULL "
                           "OR status_category IS NULL OR freight_amount IS NULL").fetchone()[0] == 0
        assert con.execute(f"SELECT total_amount, is_void FROM main.invoice_history WHERE {SWO_CREDIT}").fetchall() == [
            (Decimal("-1140.0000"), False)]
        assert history_out_of_sync(con)[0] == 0
        assert history_violations(con)[0] == 0
        assert con.execute("SELECT schema_key <> 'release-1' FROM main._pipeline_schema").fetchone()[0]

    docs.load(app, "crm", [])  # a later run: nothing left to upgrade, nothing changes
    with wh.reader() as con:
        assert _dump(con) == want
        assert con.execute("SELECT count(*) FROM main.invoice_history").fetchone()[0] == versions_before


def test_a_lifecycle_step_first_after_the_release_upgrades_too(tmp_path: Path) -> None:
    """The daily aging job or a deletion reconciliation may be the first step on the old warehouse."""
    from invoice_pipeline.history import record_history
    from invoice_pipeline.lifecycle import build_aging_snapshot

    app = _load_all(tmp_path)
    wh = Warehouse(app.warehouse)
    with wh.writer() as con:
        _downgrade_to_release_1(con)
        versions_before = con.execute("SELECT count(*) FROM main.invoice_history").fetchone()[0]
    assert record_history(wh, "swo") == 0
    build_aging_snapshot(wh)
    with wh.reader() as con:
        assert con.execute(f"SELECT document_type, total_amount FROM main.invoices WHERE {SWO_CREDIT}").fetchone() == (
            "credit_memo", Decimal("-1140.0000"))
        assert con.execute("SELECT count(*) FROM main.invoice_history").fetchone()[0] == versions_before
        credits = dict(con.execute("SELECT source_name, sum(credit_memo_count) FROM main.ar_aging_snapshot "
                                   "GROUP BY 1").fetchall())
        assert credits["swo"] == 1 and credits["agv"] == 1 and credits["ora"] == 1
