"""Every example payload of the vendors' API documents (fixtures/api_docs/) through its source's
mapping and the real load: it loads exactly, or it is quarantined with a reason a person understands.
Also the variants the vendors' documentation describes (freight, credits, tax-only items)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from invoice_pipeline.money import MappingError
from invoice_pipeline.audit import RULES, violations
from invoice_pipeline.sources.oracle_occ.mapping import map_invoice as oracle_map
from invoice_pipeline.warehouse import Warehouse

from . import api_docs_payloads as docs
from .conftest import make_app

RULE = {r.name: r for r in RULES}
D = Decimal


def _app(tmp_path: Path, types: dict[str, str]):
    return make_app(tmp_path, docs.source_blocks(types))


def _invoices(con, source: str) -> dict[str, dict]:
    cur = con.execute("SELECT * FROM main.invoices WHERE source_name = ? ORDER BY invoice_id", [source])
    names = [d[0] for d in cur.description]
    return {row[names.index("invoice_id")]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def _quarantine(con, source: str) -> list[tuple[str | None, str]]:
    return con.execute(f"SELECT invoice_id, reason FROM {source}._quarantine ORDER BY invoice_id").fetchall()


def _blocking_violations(con) -> dict[str, list]:
    return {r.name: v for r in RULES if r.blocking and (v := violations(con, r))}


def test_oracle_detail_example_loads_exactly_and_list_items_are_quarantined(tmp_path: Path) -> None:
    app = _app(tmp_path, {"ora": "oracle_occ"})
    items = docs.oracle_list_items()
    docs.load(app, "ora", [docs.oracle_detail(), *items])
    with Warehouse(app.warehouse).reader() as con:
        inv = _invoices(con, "ora")["901382"]
        assert (inv["net_amount"], inv["tax_amount"], inv["freight_amount"], inv["total_amount"]) == (
            D("1041.7000"), D("208.3000"), D("0.0000"), D("1250.0000"))
        assert (inv["document_type"], inv["status_category"], inv["is_void"], inv["currency_code"]) == (
            "invoice", "open", False, "USD")
        assert con.execute("SELECT count(*), sum(line_amount), min(currency_code) FROM main.invoice_lines "
                           "WHERE source_name = 'ora'").fetchone() == (10, D("1041.7000"), "USD")
        assert con.execute("SELECT sum(original_amount), min(currency_code) FROM main.invoice_installments "
                           "WHERE source_name = 'ora'").fetchone() == (D("1250.0000"), "USD")
        assert _blocking_violations(con) == {}
        # A list item has no LastUpdateDate and no lines: never loaded as if it were a complete invoice.
        quarantined = dict(_quarantine(con, "ora"))
        assert set(quarantined) == {i["CustomerTransactionId"] for i in items}
        assert all("last-modified" in reason or "list item" in reason for reason in quarantined.values())
        assert set(_invoices(con, "ora")) == {"901382"}


def test_oracle_list_item_through_the_mapping_names_what_is_missing() -> None:
    item = next(i for i in docs.oracle_list_items() if i["CustomerTransactionId"] == "891371")
    with pytest.raises(MappingError, match="891371: receivablesInvoiceLines missing: this is the list item"):
        oracle_map(item, "ora")


def test_oracle_freight_and_credit_memo(tmp_path: Path) -> None:
    app = _app(tmp_path, {"ora": "oracle_occ"})
    docs.load(app, "ora", [docs.oracle_freight_detail(), docs.oracle_credit_memo()])
    with Warehouse(app.warehouse).reader() as con:
        invoices = _invoices(con, "ora")
        freight = invoices["891371"]
        assert (freight["net_amount"], freight["tax_amount"], freight["freight_amount"], freight["total_amount"]) == (
            D("2780.0000"), D("226.0000"), D("10.0000"), D("3016.0000"))
        cm = invoices["901999"]
        assert (cm["document_type"], cm["status_category"]) == ("credit_memo", "open")
        assert (cm["net_amount"], cm["tax_amount"], cm["total_amount"], cm["balance_due"]) == (
            D("-1041.7000"), D("-208.3000"), D("-1250.0000"), D("-1250.0000"))
        assert con.execute("SELECT max(line_amount), max(tax_amount) FROM main.invoice_lines JOIN main.invoice_tax_lines "
                           "USING (source_name, invoice_id, line_id) WHERE invoice_id = '901999'").fetchone() == (
            D("-104.1700"), D("-20.8300"))
        assert _blocking_violations(con) == {}
        assert violations(con, RULE["credit_memo_signs"]) == []


def test_oracle_freight_left_out_of_the_invariant_is_caught(tmp_path: Path) -> None:
    """Without freight in Σ lines + Σ tax + freight = total, invoice 891371 would be 10 off."""
    app = _app(tmp_path, {"ora": "oracle_occ"})
    docs.load(app, "ora", [docs.oracle_freight_detail()])
    with Warehouse(app.warehouse).writer() as con:
        assert violations(con, RULE["lines_plus_tax_equal_total"]) == []
        con.execute("UPDATE main.invoices SET freight_amount = 0")
        (row,) = violations(con, RULE["lines_plus_tax_equal_total"])
        assert row[:2] == ("ora", "891371") and "freight 0.0000 <> total 3016.0000" in row[2]


@pytest.mark.parametrize(
    ("oracle_type", "total", "expected"),
    [("Invoice", "10", "invoice"), ("ORA_OSS_Invoice", "10", "invoice"), ("Credit Memo", "-10", "credit_memo"),
     ("ACME Credit Memo", "-10", "credit_memo"), ("Invoice", "-10", "credit_memo"), ("Debit Memo", "10", "debit_memo"),
     ("Chargeback", "10", "other")],
)
def test_oracle_document_types(oracle_type: str, total: str, expected: str) -> None:
    detail = docs.oracle_detail()
    detail.update(TransactionType=oracle_type, EnteredAmount=total)
    assert oracle_map(detail, "ora").invoice["document_type"] == expected


@pytest.mark.parametrize(("status", "balance", "category"),
                         [("Complete", "1250", "open"), ("Complete", "0", "paid"), ("Incomplete", "1250", "draft"),
                          ("Void", "0", "void")])
def test_oracle_status_category(status: str, balance: str, category: str) -> None:
    detail = docs.oracle_detail()
    detail.update(InvoiceStatus=status, InvoiceBalanceAmount=balance)
    inv = oracle_map(detail, "ora").invoice
    assert (inv["status_category"], inv["is_void"]) == (category, category == "void")


def test_crmcom_examples_load_exactly_and_partial_records_are_quarantined(tmp_path: Path) -> None:
    app = _app(tmp_path, {"crm": "crmcom"})
    partial = docs.crmcom_partial_invoices()
    docs.load(app, "crm", [*docs.crmcom_invoices(), *partial])
    with Warehouse(app.warehouse).reader() as con:
        invoices = _invoices(con, "crm")
        assert len(invoices) == 3
        draft = next(i for i in invoices.values() if i["invoice_number"] is None)
        assert (draft["status"], draft["status_category"], draft["total_amount"]) == ("DRAFT", "draft", D("57.0000"))
        vat = next(i for i in invoices.values() if i["invoice_number"] == "I00000499")
        assert (vat["net_amount"], vat["tax_amount"], vat["total_amount"], vat["status_category"]) == (
            D("75.5000"), D("6.9600"), D("82.4600"), "paid")
        assert {i["currency_code"] for i in invoices.values()} == {"USD"}  # none stated: the config's default
        assert _blocking_violations(con) == {}
        # The second example lists a few fields only (no log_information): no version to merge by.
        quarantined = _quarantine(con, "crm")
        assert {i for i, _ in quarantined} == {i["id"] for i in partial}
        assert all("last-modified" in reason for _, reason in quarantined)


def test_crmcom_tax_only_items_rejected_and_credit_notes(tmp_path: Path) -> None:
    app = _app(tmp_path, {"crm": "crmcom"})
    rejected = docs.crmcom_variant("I00000498", "REJ498", life_cycle_state="REJECTED")
    credit = docs.crmcom_variant("I00000498", "CRN498", type={"classification": "CREDIT_NOTE", "name": "Credit 1"})
    other = docs.crmcom_variant("I00000498", "WO498", type={"classification": "WRITE_OFF"})
    docs.load(app, "crm", [docs.crmcom_tax_only(), rejected, credit, other])
    with Warehouse(app.warehouse).reader() as con:
        invoices = _invoices(con, "crm")
        tax_only = invoices["TAXONLY499"]
        assert (tax_only["tax_amount"], tax_only["total_amount"]) == (D("6.9600"), D("82.4600"))  # was 0.00 vs 82.46
        rows = con.execute("SELECT tax_code, tax_rate, tax_amount, is_derived FROM main.invoice_tax_lines "
                           "WHERE invoice_id = 'TAXONLY499' ORDER BY tax_amount").fetchall()
        assert rows == [(None, None, D("0.5100"), True), (None, None, D("2.4000"), True), (None, None, D("4.0500"), True)]
        assert (invoices["REJ498"]["status_category"], invoices["REJ498"]["is_void"]) == ("void", True)
        # A credit note CRM.COM states with a positive total is signed as owed: negative.
        assert (invoices["CRN498"]["document_type"], invoices["CRN498"]["total_amount"],
                invoices["CRN498"]["net_amount"]) == ("credit_memo", D("-57.0000"), D("-57.0000"))
        assert invoices["WO498"]["document_type"] == "other"
        assert _blocking_violations(con) == {}


def test_softwareone_example_loads_as_sent_and_its_placeholder_total_is_flagged(tmp_path: Path) -> None:
    """The documented invoice's placeholder numbers disagree (one line of 950 + VAT 190, total 2000):
    it loads exactly as sent, and the blocking invariant check names it."""
    app = _app(tmp_path, {"swo": "softwareone"})
    docs.load(app, "swo", docs.softwareone_invoices())
    with Warehouse(app.warehouse).reader() as con:
        inv = _invoices(con, "swo")["INV-123-456-789"]
        assert (inv["document_type"], inv["status"], inv["status_category"], inv["currency_code"]) == (
            "invoice", "Active", "open", "EUR")
        assert (inv["net_amount"], inv["tax_amount"], inv["total_amount"], inv["balance_due"]) == (
            D("950.0000"), D("190.0000"), D("2000.0000"), D("1500.7500"))
        assert violations(con, RULE["lines_plus_tax_equal_total"]) == [
            ("swo", "INV-123-456-789", "lines 950.0000 + tax 190.0000 + freight 0.0000 <> total 2000.0000")]
        assert _quarantine(con, "swo") == []


def test_softwareone_credit_is_negated_in_the_conformed_model_only(tmp_path: Path) -> None:
    app = _app(tmp_path, {"swo": "softwareone"})
    docs.load(app, "swo", [docs.softwareone_credit()])
    with Warehouse(app.warehouse).reader() as con:
        inv = _invoices(con, "swo")["CRN-123-456-789"]
        assert (inv["document_type"], inv["status_category"]) == ("credit_memo", "open")
        assert (inv["net_amount"], inv["tax_amount"], inv["total_amount"], inv["balance_due"]) == (
            D("-950.0000"), D("-190.0000"), D("-1140.0000"), D("-1140.0000"))
        line = con.execute("SELECT quantity, unit_price, line_amount FROM main.invoice_lines").fetchone()
        assert line == (D("-5.000000"), D("12.500000"), D("-950.0000"))
        assert con.execute("SELECT original_amount, balance_due FROM main.invoice_installments").fetchone() == (
            D("-1140.0000"), D("-1140.0000"))
        # the source's own table keeps the values as sent
        sent = con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'swo' AND table_name = 'invoices' "
                           "AND column_name LIKE '%invoiceTotal%'").fetchone()[0]
        assert con.execute(f'SELECT "{sent}" FROM swo.invoices').fetchone()[0] == "1140"
        assert _blocking_violations(con) == {}


@pytest.mark.parametrize(("status", "balance", "category"),
                         [("Generated", 10, "open"), ("Issued", 10, "open"), ("Overdue", 10, "open"),
                          ("Paid", 0, "paid"), ("Cancelled", 0, "void"), ("Active", 10, "open"), ("Active", 0, "paid")])
def test_softwareone_statuses(status: str, balance: int, category: str) -> None:
    from invoice_pipeline.sources.softwareone.mapping import map_invoice

    inv = docs.softwareone_invoices()[0]
    inv["status"] = status
    inv["erpData"]["balanceDue"] = balance
    mapped = map_invoice(inv, "swo").invoice
    assert (mapped["status_category"], mapped["is_void"]) == (category, category == "void")


def test_agvance_example_with_null_header_is_quarantined_with_a_reason(tmp_path: Path) -> None:
    app = _app(tmp_path, {"agv": "agvance"})
    records = docs.agvance_records()
    docs.load(app, "agv", records)
    with Warehouse(app.warehouse).reader() as con:
        assert _invoices(con, "agv") == {}
        quarantined = _quarantine(con, "agv")
        assert len(quarantined) == 1  # both sample records have the same key: one record, its newest copy
        assert "InvoiceRecordHeaderDetails" in quarantined[0][1] and "null" in quarantined[0][1]
