"""SoftwareOne Marketplace invoice -> conformed model (where each column comes from: COLUMN_SOURCES).

The API has no tax-line objects: each invoice line yields one derived tax line (rate `vatPercent`,
base `vatBaseAmount`, amount `amountIncludingVat - lineAmount`). Dates are taken as written, in the
ERP's own offset ("2025-04-30T00:00:00.0000000+10:00" is 30 April, not 29 April UTC).
`type` is Debit or Credit; a Credit document is sent with positive amounts and negated here (the
conformed model holds what the customer owes; the source tables keep the values as sent). Status
is Generated, Issued, Overdue, Paid or Cancelled (older tenants: Active).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from invoice_pipeline.conformed import NO_INSTALLMENTS, NOT_PROVIDED, ConformedInvoice, negate_amounts, status_category
from invoice_pipeline.money import QUANTITY, RATE, MappingError, to_date, to_decimal, to_int, to_text, to_timestamp
from invoice_pipeline.sources.mapping_kit import loose_object as _obj  # absent, or a placeholder such as "[Circular Reference]"
from invoice_pipeline.sources.mapping_kit import objects, required_text

# The stored `status` values that mean void and draft: status_category and is_void are computed from
# them here, and upgrade.py builds its SQL for rows an earlier release wrote from the same constants.
VOID_STATUSES = ("Cancelled",)
DRAFT_STATUSES: tuple[str, ...] = ()
# A one-off migration fact: the release before signed credits stored a Credit's amounts as the API
# sends them (positive); upgrade.py's upgrade_history negates such recorded versions once.
CREDITS_STORED_POSITIVE_BEFORE_UPGRADE = True
_CREDIT = " (negated for Credit)"

# Where each conformed column comes from (the warehouse's column comments are built from this).
COLUMN_SOURCES: dict[str, dict[str, str]] = {
    "invoices": {
        "invoice_id": "id",
        "invoice_number": "erpData.documentNo",
        "status": "status",
        "document_type": "type (Debit or absent: invoice, Credit: credit_memo, other values: other)",
        "status_category": "status Cancelled: void",
        "is_truncated": "always false (an invoice whose lines the API omits is quarantined)",
        "customer_id": "buyer.id",
        "customer_name": "buyer.name",
        "invoice_date": "erpData.documentDate (the date as written, in the ERP's offset)",
        "due_date": "erpData.dueDate (the date as written, in the ERP's offset)",
        "currency_code": "price.currency",
        "freight_amount": "none sent: 0",
        "total_amount": "erpData.invoiceTotal" + _CREDIT,
        "balance_due": "erpData.balanceDue" + _CREDIT,
        "payment_terms": "erpData.payment.termsCode",
        "purchase_order": "erpData.yourReference",
        "created_at": "audit.created.at",
        "last_modified_at": "audit.updated.at, else audit.created.at",
    },
    "invoice_lines": {
        "line_id": "lines.id",
        "line_number": "lines.lineNo",
        "item_code": "lines.itemNo",
        "description": "lines.description",
        "quantity": "lines.quantity" + _CREDIT,
        "unit_of_measure": "lines.unitOfMeasure",
        "unit_price": "lines.unitPrice",
        "line_amount": "lines.lineAmount" + _CREDIT,
    },
    "invoice_tax_lines": {
        "tax_line_id": "lines.id (one derived tax line per line)",
        "line_id": "lines.id",
        "tax_code": NOT_PROVIDED,
        "tax_rate": "lines.vatPercent",
        "taxable_amount": "lines.vatBaseAmount" + _CREDIT,
        "tax_amount": "lines.amountIncludingVat - lines.lineAmount" + _CREDIT,
        "is_derived": "always true (the API has no tax-line objects)",
    },
    "invoice_installments": NO_INSTALLMENTS,
}


def omitted(payload: dict[str, Any]) -> list[str]:
    """Fields the API says it left out of this invoice (its own `$meta.omitted`)."""
    names = _obj(payload, "$meta").get("omitted")
    return [str(n) for n in names] if isinstance(names, list) else []


def lines_missing(payload: dict[str, Any]) -> bool:
    """True when the payload does not carry its complete `lines` (omitted or absent)."""
    return "lines" in omitted(payload) or not isinstance(payload.get("lines"), list)


def last_modified(payload: dict[str, Any]) -> Any:
    """audit.updated.at, else audit.created.at: never-updated invoices have no `updated`."""
    audit = _obj(payload, "audit")
    updated = _obj(audit, "updated").get("at")
    if updated not in (None, ""):
        return to_timestamp(updated, "audit.updated.at")
    return to_timestamp(_obj(audit, "created").get("at"), "audit.created.at")


def map_invoice(p: dict[str, Any], source_name: str) -> ConformedInvoice:
    invoice_id = required_text(p, "id")
    if lines_missing(p):
        # Never load an invoice whose lines the API left out as if it had none.
        raise MappingError(f"invoice {invoice_id}: lines: omitted by the API ($meta.omitted) or missing")
    erp, price, buyer, audit = _obj(p, "erpData"), _obj(p, "price"), _obj(p, "buyer"), _obj(p, "audit")
    status = to_text(p.get("status"))

    lines, tax_lines = [], []
    for pos, item in enumerate(objects(p["lines"], "lines")):
        line_id = to_text(item.get("id"))
        if not line_id:
            raise MappingError(f"invoice {invoice_id}: lines[{pos}].id: missing")
        where = f"line {line_id}: "
        line_amount = to_decimal(item.get("lineAmount"), where + "lineAmount", required=True)
        gross = to_decimal(item.get("amountIncludingVat"), where + "amountIncludingVat", required=True)
        lines.append(
            {
                "line_id": line_id,
                "line_number": to_int(item.get("lineNo"), where + "lineNo"),
                "item_code": to_text(item.get("itemNo")),
                "description": to_text(item.get("description")),
                "quantity": to_decimal(item.get("quantity"), where + "quantity", QUANTITY),
                "unit_of_measure": to_text(item.get("unitOfMeasure")),
                "unit_price": to_decimal(item.get("unitPrice"), where + "unitPrice", QUANTITY),
                "line_amount": line_amount,
            }
        )
        tax_lines.append(
            {
                "tax_line_id": line_id,  # one derived tax line per line: it shares the line's id
                "line_id": line_id,
                "tax_code": None,
                "tax_rate": to_decimal(item.get("vatPercent"), where + "vatPercent", RATE),
                "taxable_amount": to_decimal(item.get("vatBaseAmount"), where + "vatBaseAmount"),
                "tax_amount": gross - line_amount,
                "is_derived": True,
            }
        )

    created = _obj(audit, "created").get("at")
    doc = to_text(p.get("type"))
    balance = to_decimal(erp.get("balanceDue"), "erpData.balanceDue")
    invoice = {
        "source_name": source_name,
        "source_type": "softwareone",
        "invoice_id": invoice_id,
        "invoice_number": to_text(erp.get("documentNo")),
        "status": status,
        # Debit (or absent, as on older tenants) -> invoice; a value the docs do not list -> other, amounts as sent
        "document_type": {"Credit": "credit_memo", "Debit": "invoice", None: "invoice"}.get(doc, "other"),
        "status_category": status_category(status in VOID_STATUSES, status in DRAFT_STATUSES, balance),
        "is_void": status in VOID_STATUSES,
        "is_truncated": False,
        "customer_id": to_text(buyer.get("id")),
        "customer_name": to_text(buyer.get("name")),
        "invoice_date": to_date(erp.get("documentDate"), "erpData.documentDate"),
        "due_date": to_date(erp.get("dueDate"), "erpData.dueDate"),
        "currency_code": to_text(price.get("currency")),
        "total_amount": to_decimal(erp.get("invoiceTotal"), "erpData.invoiceTotal", required=True),
        "balance_due": balance,
        "freight_amount": Decimal("0.0000"),  # SoftwareOne invoices carry no freight
        "payment_terms": to_text(_obj(erp, "payment").get("termsCode")),
        "purchase_order": to_text(erp.get("yourReference")),  # the customer's own reference (BC "Your Reference")
        "created_at": to_timestamp(created, "audit.created.at"),
        "last_modified_at": last_modified(p),
    }
    conformed = ConformedInvoice(invoice, lines, tax_lines)
    return negate_amounts(conformed) if doc == "Credit" else conformed
