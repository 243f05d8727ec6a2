"""Agvance invoice record -> conformed model (where each column comes from: COLUMN_SOURCES).

Agvance has no single invoice id: invoice numbers restart per location, so the key is
'<InvoiceLocation>-<InvoiceNumber>'. Dates are US 'MM/dd/yyyy'; LastModifiedUtc is a naive
UTC timestamp. Amounts are JSON numbers (floats), converted exactly through money.to_decimal.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from invoice_pipeline.conformed import NO_INSTALLMENTS, NOT_PROVIDED, ConformedInvoice, status_category
from invoice_pipeline.money import QUANTITY, RATE, MappingError, to_date, to_decimal, to_int, to_text, to_timestamp
from invoice_pipeline.sources.mapping_kit import object_list

HEADER = "InvoiceRecordHeaderDetails"
LINES = "InvoiceRecordLineItemDetails"
TAXES = "InvoiceTaxCodeDetails"
US_DATE = "%m/%d/%Y"
# The stored `status` values that mean void and draft (Agvance has a Void flag and no drafts: the
# mapping writes this status for a voided invoice); upgrade.py builds its SQL for rows an earlier
# release wrote from these constants.
VOID_STATUSES = ("Void",)
DRAFT_STATUSES: tuple[str, ...] = ()

# Where each conformed column comes from (the warehouse's column comments are built from this).
COLUMN_SOURCES: dict[str, dict[str, str]] = {
    "invoices": {
        "invoice_id": "'<InvoiceLocation>-<InvoiceNumber>' (numbers restart per location)",
        "invoice_number": "InvoiceNumber",
        "status": f"{HEADER}.Void and BalanceDue: Void, Paid (nothing due) or Open",
        "document_type": f"none at the source: credit_memo when {HEADER}.InvoiceTotal < 0, else invoice",
        "status_category": f"{HEADER}.Void: void",
        "is_truncated": "always false",
        "customer_id": f"{HEADER}.CustomerID",
        "customer_name": f"{HEADER}.CustomerName",
        "invoice_date": "InvoiceDate (MM/dd/yyyy)",
        "due_date": f"{HEADER}.DueDate (MM/dd/yyyy)",
        "currency_code": "the source config's currency (Agvance sends none)",
        "freight_amount": "none sent: 0",
        "total_amount": f"{HEADER}.InvoiceTotal (credits come negative)",
        "balance_due": f"{HEADER}.BalanceDue",
        "payment_terms": f"{HEADER}.Terms",
        "purchase_order": NOT_PROVIDED,
        "created_at": NOT_PROVIDED,
        "last_modified_at": f"{HEADER}.LastModifiedUtc (naive UTC)",
    },
    "invoice_lines": {
        "line_id": f"{LINES}.LineNumber",
        "line_number": f"{LINES}.LineNumber",
        "item_code": f"{LINES}.ProductID",
        "description": f"{LINES}.ProductName",
        "quantity": f"{LINES}.Quantity",
        "unit_of_measure": f"{LINES}.UnitOfMeasure",
        "unit_price": f"{LINES}.UnitPrice",
        "line_amount": f"{LINES}.Extension",
    },
    "invoice_tax_lines": {
        "tax_line_id": f"'<LineNumber>:<TaxCode>' of {TAXES}",
        "line_id": f"{TAXES}.LineNumber when it names a line (else header-level tax: null)",
        "tax_code": f"{TAXES}.TaxCode",
        "tax_rate": f"{TAXES}.TaxRate",
        "taxable_amount": f"{TAXES}.TaxableAmount",
        "tax_amount": f"{TAXES}.TaxAmount",
        "is_derived": "always false",
    },
    "invoice_installments": NO_INSTALLMENTS,
}


def invoice_key(p: dict[str, Any]) -> str:
    """'<InvoiceLocation>-<InvoiceNumber>': the same number exists at several locations."""
    location = to_text(p.get("InvoiceLocation"))
    number = to_text(p.get("InvoiceNumber"))
    if not location or not number:
        raise MappingError(f"InvoiceLocation/InvoiceNumber: missing (got {location!r}, {number!r})")
    return f"{location.strip()}-{number.strip()}"


def header(p: dict[str, Any], where: str = "") -> dict[str, Any]:
    h = p.get(HEADER)
    if h is None:
        raise MappingError(f"{where}{HEADER} is null: the record has no header (customer, totals, due date, "
                           "LastModifiedUtc), so there is nothing to load")
    if not isinstance(h, dict):
        raise MappingError(f"{where}{HEADER}: expected an object, got {type(h).__name__}")
    return h


def last_modified(p: dict[str, Any], where: str = "") -> datetime | None:
    """The record's version: header LastModifiedUtc, naive and in UTC."""
    return to_timestamp(header(p, where).get("LastModifiedUtc"), f"{where}{HEADER}.LastModifiedUtc", "UTC")


def us_date(value: Any, field: str) -> date | None:
    """'MM/dd/yyyy' (a trailing time part, as some tenants send, is ignored); ISO as a fallback."""
    if isinstance(value, str) and "/" in value:
        return to_date(value.strip().split(" ")[0], field, US_DATE)
    return to_date(value, field)


def to_bool(value: Any, field: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "y", "n"):
        return value.strip().lower() in ("true", "1", "y")
    raise MappingError(f"{field}: expected a boolean, got {value!r}")


def map_invoice(p: dict[str, Any], source_name: str, currency: str = "USD") -> ConformedInvoice:
    invoice_id = invoice_key(p)
    where = f"invoice {invoice_id}: "
    h = header(p, where)

    lines: list[dict[str, Any]] = []
    seen_lines: set[str] = set()
    for pos, item in enumerate(object_list(p, LINES, where)):
        number = to_int(item.get("LineNumber"), f"{where}{LINES}[{pos}].LineNumber")
        if number is None:
            raise MappingError(f"{where}{LINES}[{pos}].LineNumber: missing")
        line_id = str(number)
        if line_id in seen_lines:
            raise MappingError(f"{where}{LINES}: LineNumber {number} appears twice")
        seen_lines.add(line_id)
        lw = f"{where}line {number}: "
        lines.append(
            {
                "line_id": line_id,
                "line_number": number,
                "item_code": to_text(item.get("ProductID")),
                "description": to_text(item.get("ProductName")),
                "quantity": to_decimal(item.get("Quantity"), lw + "Quantity", QUANTITY),
                "unit_of_measure": to_text(item.get("UnitOfMeasure")),
                "unit_price": to_decimal(item.get("UnitPrice"), lw + "UnitPrice", QUANTITY),
                # Extension is the line's amount after discounts, before tax.
                "line_amount": to_decimal(item.get("Extension"), lw + "Extension", required=True),
            }
        )

    tax_lines: list[dict[str, Any]] = []
    seen_taxes: set[str] = set()
    for pos, tax in enumerate(object_list(p, TAXES, where)):
        tw = f"{where}{TAXES}[{pos}]."
        number = to_int(tax.get("LineNumber"), tw + "LineNumber")
        code = to_text(tax.get("TaxCode")) or ""
        tax_line_id = f"{'' if number is None else number}:{code}"
        if tax_line_id in seen_taxes:
            raise MappingError(f"{where}{TAXES}: LineNumber {number} / TaxCode {code!r} appears twice")
        seen_taxes.add(tax_line_id)
        # A tax row whose LineNumber matches no line (0 or null) is header-level tax.
        line_id = str(number) if number is not None and str(number) in seen_lines else None
        tax_lines.append(
            {
                "tax_line_id": tax_line_id,
                "line_id": line_id,
                "tax_code": code or None,
                # TaxRate is already a percentage (7.25 means 7.25%).
                "tax_rate": to_decimal(tax.get("TaxRate"), tw + "TaxRate", RATE),
                "taxable_amount": to_decimal(tax.get("TaxableAmount"), tw + "TaxableAmount"),
                "tax_amount": to_decimal(tax.get("TaxAmount"), tw + "TaxAmount", required=True),
                "is_derived": False,
            }
        )

    hw = f"{where}{HEADER}."
    void = to_bool(h.get("Void"), hw + "Void")
    balance = to_decimal(h.get("BalanceDue"), hw + "BalanceDue")
    total = to_decimal(h.get("InvoiceTotal"), hw + "InvoiceTotal", required=True)
    invoice = {
        "source_name": source_name,
        "source_type": "agvance",
        "invoice_id": invoice_id,
        "invoice_number": to_text(p.get("InvoiceNumber")),
        "status": VOID_STATUSES[0] if void else ("Paid" if balance == 0 else "Open"),
        # Agvance has no document type: a negative total is a credit, sent signed already
        "document_type": "credit_memo" if total < 0 else "invoice",
        "status_category": status_category(void, False, balance),
        "is_void": void,
        "is_truncated": False,
        "customer_id": to_text(h.get("CustomerID")),
        "customer_name": to_text(h.get("CustomerName")),
        "invoice_date": us_date(p.get("InvoiceDate"), where + "InvoiceDate"),
        "due_date": us_date(h.get("DueDate"), hw + "DueDate"),
        "currency_code": currency,
        "freight_amount": Decimal("0.0000"),  # Agvance sends no freight
        "total_amount": total,
        "balance_due": balance,
        "payment_terms": to_text(h.get("Terms")),
        "purchase_order": None,
        "created_at": None,  # Agvance does not expose a creation time
        "last_modified_at": last_modified(p, where),
    }
    return ConformedInvoice(invoice, lines, tax_lines)
