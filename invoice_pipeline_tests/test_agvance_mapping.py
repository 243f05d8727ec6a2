"""Agvance record -> conformed rows, with exact Decimal values (docs/DATA_DICTIONARY.md)."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.money import MappingError
from invoice_pipeline.sources.agvance.mapping import invoice_key, map_invoice

RECORD: dict[str, Any] = {
    "InvoiceDate": "03/07/2025",
    "InvoiceLocation": "002",
    "InvoiceNumber": "100045",
    "InvoiceRecordHeaderDetails": {
        "InvoiceGuid": "8a7c1f0e-4b7a-4c1e-9d55-3f3b0f1a2c11",
        "CustomerID": "F10042",
        "CustomerName": "Hernández Family Farms",
        "InvoiceTotal": 1207.47,
        "SubTotal": 1122.1,
        "TaxTotal": 85.37,
        "AmountPaid": 500,
        "BalanceDue": 707.47,
        "DueDate": "04/06/2025",
        "Terms": "Net 30",
        "Void": False,
        "LastModifiedUtc": "2025-03-08T14:05:09",
    },
    "InvoiceRecordSplitDetails": [],
    "InvoiceRecordLineItemDetails": [
        {"LineNumber": 1, "ProductID": "RUPMAX", "ProductName": "Roundup PowerMAX 3", "Quantity": 20.5,
         "UnitOfMeasure": "GAL", "UnitPrice": 48.125, "Extension": 986.56},
        {"LineNumber": 2, "ProductID": "UAN28", "ProductName": "UAN 28% Solution", "Quantity": 100,
         "UnitOfMeasure": "GAL", "UnitPrice": 1.3554, "Extension": 135.54},
    ],
    "InvoiceTaxCodeDetails": [
        {"LineNumber": 1, "TaxCode": "IL-ST", "Description": "Illinois State Sales Tax", "TaxRate": 6.25,
         "TaxableAmount": 986.56, "TaxAmount": 61.66},
        {"LineNumber": 1, "TaxCode": "CNTY", "Description": "County Sales Tax", "TaxRate": 1,
         "TaxableAmount": 986.56, "TaxAmount": 9.87},
        {"LineNumber": 0, "TaxCode": "FEE", "Description": "State fertilizer inspection fee", "TaxRate": 10.2,
         "TaxableAmount": 135.7, "TaxAmount": 13.84},
    ],
    "InvoiceBooksDetails": [{"Book ID": "BK1", "Rate": 1.5, "rate": "per TON", "Größe": None}],
    "InvoiceBlendsDetails": [],
    "InvoiceDelivsDetails": [],
    "InvoiceEnergyDetails": [],
    "InvoiceApplicatorDetails": [],
}


def rec(**header: Any) -> dict[str, Any]:
    r = copy.deepcopy(RECORD)
    r["InvoiceRecordHeaderDetails"].update(header)
    return r


def test_header_exact():
    inv = map_invoice(RECORD, "agv", "CAD").invoice
    assert inv == {
        "source_name": "agv", "source_type": "agvance", "invoice_id": "002-100045", "invoice_number": "100045",
        "status": "Open", "document_type": "invoice", "status_category": "open", "is_void": False, "is_truncated": False,
        "customer_id": "F10042", "customer_name": "Hernández Family Farms",
        "invoice_date": date(2025, 3, 7), "due_date": date(2025, 4, 6), "currency_code": "CAD",
        "freight_amount": Decimal("0.0000"), "total_amount": Decimal("1207.4700"), "balance_due": Decimal("707.4700"),
        "payment_terms": "Net 30", "purchase_order": None, "created_at": None,
        "last_modified_at": datetime(2025, 3, 8, 14, 5, 9, tzinfo=UTC),
    }


def test_lines_and_tax_lines_exact():
    c = map_invoice(RECORD, "agv")
    assert c.lines[0] == {
        "line_id": "1", "line_number": 1, "item_code": "RUPMAX", "description": "Roundup PowerMAX 3",
        "quantity": Decimal("20.500000"), "unit_of_measure": "GAL", "unit_price": Decimal("48.125000"),
        "line_amount": Decimal("986.5600"),
    }
    assert c.lines[1]["unit_price"] == Decimal("1.355400") and c.lines[1]["quantity"] == Decimal("100.000000")
    assert [t["tax_line_id"] for t in c.tax_lines] == ["1:IL-ST", "1:CNTY", "0:FEE"]
    assert c.tax_lines[0] == {
        "tax_line_id": "1:IL-ST", "line_id": "1", "tax_code": "IL-ST", "tax_rate": Decimal("6.250000"),
        "taxable_amount": Decimal("986.5600"), "tax_amount": Decimal("61.6600"), "is_derived": False,
    }
    # LineNumber 0 matches no line: header-level tax, line_id null.
    assert c.tax_lines[2]["line_id"] is None and c.tax_lines[2]["tax_rate"] == Decimal("10.200000")
    assert c.installments == []


def test_invariant_and_derived_installment():
    c = conformed.finalize(map_invoice(RECORD, "agv"), derive_installment=True)
    inv = c.invoice
    assert inv["net_amount"] == Decimal("1122.1000") and inv["tax_amount"] == Decimal("85.3700")
    assert inv["net_amount"] + inv["tax_amount"] == inv["total_amount"]
    assert c.installments == [{
        "installment_id": "002-100045", "installment_number": 1, "due_date": date(2025, 4, 6),
        "original_amount": Decimal("1207.4700"), "balance_due": Decimal("707.4700"), "status": "Open",
        "is_derived": True, "currency_code": "USD",
    }]
    assert {ln["currency_code"] for ln in c.lines + c.tax_lines} == {"USD"}


@pytest.mark.parametrize(
    ("header", "status", "void"),
    [({"BalanceDue": 0}, "Paid", False), ({"BalanceDue": 0.0, "Void": True}, "Void", True),
     ({"Void": "True"}, "Void", True), ({"Void": None}, "Open", False), ({"BalanceDue": -5.5}, "Open", False)],
)
def test_status(header, status, void):
    inv = map_invoice(rec(**header), "agv").invoice
    assert (inv["status"], inv["is_void"]) == (status, void)
    assert inv["status_category"] == ("void" if void else status.lower())


def test_negative_total_is_a_credit_memo_signed_as_sent():
    credit = rec(InvoiceTotal=-107.0, SubTotal=-100.0, TaxTotal=-7.0, BalanceDue=-107.0)
    credit["InvoiceRecordLineItemDetails"] = [{"LineNumber": 1, "ProductID": "RET", "ProductName": "Return",
                                               "Quantity": -2, "UnitOfMeasure": "GAL", "UnitPrice": 50, "Extension": -100.0}]
    credit["InvoiceTaxCodeDetails"] = [{"LineNumber": 1, "TaxCode": "IL-ST", "TaxRate": 7, "TaxableAmount": -100.0,
                                        "TaxAmount": -7.0}]
    c = conformed.finalize(map_invoice(credit, "agv"), derive_installment=True)
    assert (c.invoice["document_type"], c.invoice["status_category"]) == ("credit_memo", "open")
    assert (c.invoice["total_amount"], c.invoice["net_amount"], c.invoice["tax_amount"]) == (
        Decimal("-107.0000"), Decimal("-100.0000"), Decimal("-7.0000"))
    assert c.installments[0]["original_amount"] == Decimal("-107.0000")
    assert map_invoice(RECORD, "agv").invoice["document_type"] == "invoice"


def test_same_number_at_two_locations_are_two_invoices():
    other = {**RECORD, "InvoiceLocation": "010"}
    assert invoice_key(RECORD) != invoice_key(other) == "010-100045"


def test_date_with_time_part_and_iso_fallback():
    r = rec(DueDate="04/06/2025 00:00:00")
    r["InvoiceDate"] = "2025-03-07"
    inv = map_invoice(r, "agv").invoice
    assert (inv["invoice_date"], inv["due_date"]) == (date(2025, 3, 7), date(2025, 4, 6))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(InvoiceRecordHeaderDetails=None), "InvoiceRecordHeaderDetails is null: the record has no header"),
        (lambda r: r.update(InvoiceLocation=""), "InvoiceLocation/InvoiceNumber: missing"),
        (lambda r: r.update(InvoiceDate="13/45/2025"), "InvoiceDate: not a valid date"),
        (lambda r: r["InvoiceRecordLineItemDetails"][1].update(LineNumber=1), "LineNumber 1 appears twice"),
        (lambda r: r["InvoiceRecordLineItemDetails"][0].pop("Extension"), "line 1: Extension: missing amount"),
        (lambda r: r["InvoiceTaxCodeDetails"][1].update(TaxCode="IL-ST"), "TaxCode 'IL-ST' appears twice"),
        (lambda r: r["InvoiceRecordHeaderDetails"].update(Void="maybe"), "Void: expected a boolean"),
        (lambda r: r["InvoiceRecordHeaderDetails"].update(InvoiceTotal="n/a"), "InvoiceTotal: not a number"),
        (lambda r: r["InvoiceRecordHeaderDetails"].update(LastModifiedUtc="yesterday"), "LastModifiedUtc"),
        (lambda r: r.update(InvoiceTaxCodeDetails={"x": 1}), "InvoiceTaxCodeDetails: expected an array"),
    ],
)
def test_unmappable_records_name_the_field(mutate, message):
    r = copy.deepcopy(RECORD)
    mutate(r)
    with pytest.raises(MappingError, match=message.replace("(", r"\(")) as err:
        map_invoice(r, "agv")
    if r.get("InvoiceLocation"):
        assert "002-100045" in str(err.value)
