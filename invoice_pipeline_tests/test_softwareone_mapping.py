"""SoftwareOne mapping: exact Decimal values from the doc's example, dates as written, derived tax lines."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from invoice_pipeline import conformed
from invoice_pipeline.money import MappingError
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.softwareone.mapping import map_invoice
from invoice_pipeline.sources.softwareone.simulator import DataSet

# The fields of the 003_ example that the mapping reads (values verbatim from the doc).
EXAMPLE = {
    "$meta": {"omitted": ["text"]},
    "icon": "icon.png",
    "audit": {
        "created": {"at": "2025-04-30T14:30:00.0000000+00:00", "by": {"id": "text", "name": "text", "icon": "text"}},
        "updated": {"at": "2025-04-30T14:30:00.0000000+00:00", "by": {"id": "text", "name": "text", "icon": "text"}},
    },
    "id": "INV-123-456-789",
    "name": "Oct 2015",
    "buyer": {"id": "text", "icon": "text", "name": "text"},
    "seller": {"id": "text", "name": "text", "erpLink": {"id": "text", "seller": "[Circular Reference]"}},
    "status": "Active",
    "type": "Debit",
    "erpData": {
        "erpId": "ERP-12345",
        "documentNo": "DOC-67890",
        "documentDate": "2025-04-30T10:00:00.0000000+00:00",
        "dueDate": "2025-05-15T23:59:59.0000000+00:00",
        "balanceDue": 1500.75,
        "invoiceTotal": 2000,
        "yourReference": "Custom reference: US-PSI-1525628",
        "payment": {"methodCode": "BANK", "termsCode": "30DAYS"},
    },
    "price": {"currency": "EUR", "markup": 10, "margin": 13.04, "totalPP": 100, "totalSP": 115, "totalST": 13, "totalGT": 14.95},
    "lines": [
        {
            "id": "INL-123-123-123", "documentNo": "DOC-98765", "lineNo": 1, "discountAmount": 15, "vatBaseAmount": 100,
            "unitOfMeasure": "User/Month", "itemNo": "SKU-001", "description": "Microsoft 365 Business Standard",
            "quantity": 5, "unitPrice": 12.5, "vatPercent": 20, "amount": 1000, "lineAmount": 950, "amountIncludingVat": 1140,
        }
    ],
}


def test_example_header_exact():
    inv = map_invoice(copy.deepcopy(EXAMPLE), "swo").invoice
    assert inv["invoice_id"] == "INV-123-456-789"
    assert inv["source_type"] == "softwareone" and inv["source_name"] == "swo"
    assert inv["invoice_number"] == "DOC-67890"
    assert inv["status"] == "Active" and inv["is_void"] is False and inv["is_truncated"] is False
    assert (inv["customer_id"], inv["customer_name"]) == ("text", "text")
    assert inv["invoice_date"] == date(2025, 4, 30)
    assert inv["due_date"] == date(2025, 5, 15)
    assert inv["currency_code"] == "EUR"
    assert inv["total_amount"] == Decimal("2000.0000") and str(inv["total_amount"]) == "2000.0000"
    assert str(inv["balance_due"]) == "1500.7500"
    assert inv["payment_terms"] == "30DAYS"
    assert inv["created_at"] == datetime(2025, 4, 30, 14, 30, tzinfo=UTC)
    assert inv["last_modified_at"] == datetime(2025, 4, 30, 14, 30, tzinfo=UTC)
    assert "net_amount" not in inv and "tax_amount" not in inv  # finalize derives them


def test_example_line_and_derived_tax_line_exact():
    c = map_invoice(copy.deepcopy(EXAMPLE), "swo")
    assert c.lines == [{
        "line_id": "INL-123-123-123", "line_number": 1, "item_code": "SKU-001",
        "description": "Microsoft 365 Business Standard", "quantity": Decimal("5.000000"), "unit_of_measure": "User/Month",
        "unit_price": Decimal("12.500000"), "line_amount": Decimal("950.0000"),
    }]
    assert c.tax_lines == [{
        "tax_line_id": "INL-123-123-123", "line_id": "INL-123-123-123", "tax_code": None,
        "tax_rate": Decimal("20.000000"), "taxable_amount": Decimal("100.0000"), "tax_amount": Decimal("190.0000"),
        "is_derived": True,
    }]
    assert str(c.tax_lines[0]["tax_amount"]) == "190.0000"
    assert c.installments == []
    final = conformed.finalize(c, derive_installment=True)
    assert final.invoice["net_amount"] == Decimal("950.0000") and final.invoice["tax_amount"] == Decimal("190.0000")
    assert final.installments[0]["original_amount"] == Decimal("2000.0000")
    assert final.installments[0]["balance_due"] == Decimal("1500.7500")
    assert final.installments[0]["due_date"] == date(2025, 5, 15) and final.installments[0]["is_derived"] is True


def test_dates_are_taken_as_written_in_their_own_offset():
    p = copy.deepcopy(EXAMPLE)
    p["erpData"]["documentDate"] = "2025-04-30T00:00:00.0000000+10:00"  # 29 April 14:00 UTC
    p["erpData"]["dueDate"] = "2025-05-30T23:59:59.0000000-05:00"  # 31 May 04:59 UTC
    inv = map_invoice(p, "swo").invoice
    assert inv["invoice_date"] == date(2025, 4, 30)
    assert inv["due_date"] == date(2025, 5, 30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-04-30T16:30:00.1234567+02:00", datetime(2025, 4, 30, 14, 30, 0, 123456, tzinfo=UTC)),
        ("2025-04-30T09:30:00.0000000-05:00", datetime(2025, 4, 30, 14, 30, tzinfo=UTC)),
        ("2025-04-30T14:30:00.123Z", datetime(2025, 4, 30, 14, 30, 0, 123000, tzinfo=UTC)),
        ("2025-04-30T14:30:00Z", datetime(2025, 4, 30, 14, 30, tzinfo=UTC)),
    ],
)
def test_timestamp_variants_to_utc(text, expected):
    p = copy.deepcopy(EXAMPLE)
    p["audit"]["updated"]["at"] = text
    p["audit"]["created"]["at"] = text
    inv = map_invoice(p, "swo").invoice
    assert inv["last_modified_at"] == expected and inv["created_at"] == expected


def test_never_updated_invoice_uses_created_at():
    p = copy.deepcopy(EXAMPLE)
    del p["audit"]["updated"]
    p["audit"]["created"]["at"] = "2025-01-02T03:04:05.0000000+00:00"
    assert map_invoice(p, "swo").invoice["last_modified_at"] == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_cancelled_is_void():
    p = copy.deepcopy(EXAMPLE)
    p["status"] = "Cancelled"
    inv = map_invoice(p, "swo").invoice
    assert inv["is_void"] is True and inv["status"] == "Cancelled"


@pytest.mark.parametrize("how", ["meta", "absent"])
def test_omitted_lines_are_never_mapped_as_no_lines(how):
    p = copy.deepcopy(EXAMPLE)
    if how == "meta":
        p["$meta"]["omitted"] = ["lines"]
    else:
        del p["lines"]
    with pytest.raises(MappingError, match="lines"):
        map_invoice(p, "swo")


def test_empty_lines_list_is_an_invoice_without_lines():
    p = copy.deepcopy(EXAMPLE)
    p["lines"] = []
    c = map_invoice(p, "swo")
    assert c.lines == [] and c.tax_lines == []


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("erpData", "invoiceTotal"), "n/a", "erpData.invoiceTotal"),
        (("erpData", "invoiceTotal"), None, "erpData.invoiceTotal"),
        (("lines", 0, "amountIncludingVat"), None, "amountIncludingVat"),
        (("lines", 0, "lineAmount"), "x", "lineAmount"),
        (("lines", 0, "lineNo"), 1.5, "lineNo"),
        (("lines", 0, "id"), None, "lines\\[0\\].id"),
        (("erpData", "documentDate"), "30/04/2025", "erpData.documentDate"),
        (("audit", "created", "at"), "yesterday", "audit.created.at"),
        (("id",), "", "id"),
    ],
)
def test_unmappable_values_name_the_field(path, value, message):
    p = copy.deepcopy(EXAMPLE)
    target = p
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(MappingError, match=message):
        map_invoice(p, "swo")


def test_circular_reference_and_odd_objects_do_not_crash():
    p = copy.deepcopy(EXAMPLE)
    p["seller"] = "[Circular Reference]"
    p["buyer"] = "[Circular Reference]"
    inv = map_invoice(p, "swo").invoice
    assert inv["customer_id"] is None and inv["customer_name"] is None


def test_simulated_invoices_satisfy_the_invariant_exactly():
    data = DataSet(60, Knobs().seed, 0.0, datetime(2025, 1, 1, tzinfo=UTC))
    for inv in data.invoices:
        c = conformed.finalize(map_invoice(data.render(inv, []), "swo"), derive_installment=True)
        h = c.invoice
        assert h["net_amount"] + h["tax_amount"] == h["total_amount"], inv.id
        assert h["net_amount"] == inv.net and h["tax_amount"] == inv.tax
        assert len(c.tax_lines) == len(c.lines) == len(inv.lines)
