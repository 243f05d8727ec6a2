"""Oracle OCC invoice detail -> conformed model (where each column comes from: COLUMN_SOURCES).

Freight: the header's FreightAmount (a string, or null for none) is part of EnteredAmount
(EnteredAmount = lines + tax + freight). Credit memos arrive with negative amounts and are kept so.
TransactionType names are the tenant's own (the docs show `Invoice` and `ORA_OSS_Invoice`), so the
document type is read from what the name contains.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from invoice_pipeline.conformed import ConformedInvoice, negate_amounts, status_category
from invoice_pipeline.money import QUANTITY, RATE, MappingError, to_date, to_decimal, to_int, to_text, to_timestamp
from invoice_pipeline.sources.mapping_kit import objects, required_text

# The stored `status` values that mean void and draft: status_category and is_void are computed from
# them here, and upgrade.py builds its SQL for rows an earlier release wrote from the same constants.
VOID_STATUSES = ("Void",)
DRAFT_STATUSES = ("Incomplete",)

# Where each conformed column comes from (the warehouse's column comments are built from this).
COLUMN_SOURCES: dict[str, dict[str, str]] = {
    "invoices": {
        "invoice_id": "CustomerTransactionId",
        "invoice_number": "TransactionNumber",
        "status": "InvoiceStatus",
        "document_type": "TransactionType (containing 'Credit Memo' or EnteredAmount < 0: credit_memo; 'Debit Memo': "
                         "debit_memo; 'Chargeback': other; else invoice)",
        "status_category": "InvoiceStatus Void: void, Incomplete: draft",
        "is_truncated": "hasMore of its lines, tax lines or installments collection",
        "customer_id": "BillToPartyId",
        "customer_name": "BillToCustomerName",
        "invoice_date": "TransactionDate",
        "due_date": "DueDate",
        "currency_code": "InvoiceCurrencyCode",
        "freight_amount": "FreightAmount (null: 0)",
        "total_amount": "EnteredAmount (credit memos come negative; one sent positive is negated)",
        "balance_due": "InvoiceBalanceAmount",
        "payment_terms": "PaymentTerms",
        "purchase_order": "PurchaseOrder",
        "created_at": "CreationDate",
        "last_modified_at": "LastUpdateDate",
    },
    "invoice_lines": {
        "line_id": "receivablesInvoiceLines CustomerTransactionLineId",
        "line_number": "LineNumber",
        "item_code": "ItemNumber",
        "description": "Description",
        "quantity": "Quantity",
        "unit_of_measure": "UnitOfMeasure",
        "unit_price": "UnitSellingPrice",
        "line_amount": "LineAmount",
    },
    "invoice_tax_lines": {
        "tax_line_id": "receivablesInvoiceLineTaxLines CustomerTransactionLineId (else '<line id>:<position>')",
        "line_id": "the line holding the tax line",
        "tax_code": "Tax",
        "tax_rate": "TaxRate when sent (the self-service payload has none)",
        "taxable_amount": "TaxableAmount",
        "tax_amount": "TaxAmount",
        "is_derived": "false (source objects)",
    },
    "invoice_installments": {
        "installment_id": "receivablesInvoiceInstallments @context.key (else '<invoice id>:<position>')",
        "installment_number": "1-based position in receivablesInvoiceInstallments",
        "due_date": "InstallmentDueDate",
        "original_amount": "OriginalAmount",
        "balance_due": "InstallmentBalanceDue",
        "status": "InstallmentStatus",
    },
}


def document_type(transaction_type: str | None, entered_amount) -> str:
    """TransactionType to the conformed document type; a negative total is a credit whatever its name."""
    name = (transaction_type or "").casefold()
    if "credit memo" in name or (entered_amount is not None and entered_amount < 0):
        return "credit_memo"
    if "debit memo" in name:
        return "debit_memo"
    if "chargeback" in name:
        return "other"
    return "invoice"


def _collection(parent: dict[str, Any], name: str, where: str) -> tuple[list[dict[str, Any]], bool]:
    """Items of a nested collection and whether the API cut it off (hasMore: only 25 came)."""
    coll = parent.get(name)
    if coll is None:
        return [], False
    if not isinstance(coll, dict) or not isinstance(coll.get("items", []), list):
        raise MappingError(f"{where}{name}: expected a collection object with 'items'")
    items = coll.get("items") or []
    return objects(items, f"{where}{name}.items"), bool(coll.get("hasMore"))


def map_invoice(p: dict[str, Any], source_name: str) -> ConformedInvoice:
    invoice_id = required_text(p, "CustomerTransactionId")
    if "receivablesInvoiceLines" not in p:
        # A list item (GET .../invoices) has the header only: loading it would present an invoice
        # without its lines and tax as complete.
        raise MappingError(
            f"invoice {invoice_id}: receivablesInvoiceLines missing: this is the list item, not the invoice detail "
            "(GET /ccstore/v1/selfservice/invoices/{id}); its lines and tax were never read"
        )
    status = to_text(p.get("InvoiceStatus"))
    lines_raw, truncated = _collection(p, "receivablesInvoiceLines", "")
    inst_raw, inst_more = _collection(p, "receivablesInvoiceInstallments", "")
    truncated = truncated or inst_more

    lines, tax_lines = [], []
    for pos, item in enumerate(lines_raw):
        line_id = to_text(item.get("CustomerTransactionLineId"))
        if not line_id:
            raise MappingError(f"receivablesInvoiceLines[{pos}].CustomerTransactionLineId: missing")
        where = f"line {line_id}: "
        lines.append(
            {
                "line_id": line_id,
                "line_number": to_int(item.get("LineNumber"), where + "LineNumber"),
                "item_code": to_text(item.get("ItemNumber")),
                "description": to_text(item.get("Description")),
                "quantity": to_decimal(item.get("Quantity"), where + "Quantity", QUANTITY),
                "unit_of_measure": to_text(item.get("UnitOfMeasure")),
                "unit_price": to_decimal(item.get("UnitSellingPrice"), where + "UnitSellingPrice", QUANTITY),
                "line_amount": to_decimal(item.get("LineAmount"), where + "LineAmount", required=True),
            }
        )
        taxes, more = _collection(item, "receivablesInvoiceLineTaxLines", where)
        truncated = truncated or more
        for tpos, tax in enumerate(taxes):
            tax_id = to_text(tax.get("CustomerTransactionLineId")) or f"{line_id}:{tpos + 1}"
            tax_lines.append(
                {
                    "tax_line_id": tax_id,
                    "line_id": line_id,
                    "tax_code": to_text(tax.get("Tax")),
                    # The self-service payload carries no rate; Fusion's full resource does.
                    "tax_rate": to_decimal(tax.get("TaxRate"), where + "TaxRate", RATE),
                    "taxable_amount": to_decimal(tax.get("TaxableAmount"), where + "TaxableAmount"),
                    "tax_amount": to_decimal(tax.get("TaxAmount"), where + "TaxAmount", required=True),
                    "is_derived": False,
                }
            )

    installments = []
    for pos, inst in enumerate(inst_raw):
        context = inst.get("@context") if isinstance(inst.get("@context"), dict) else {}
        inst_id = to_text(context.get("key")) or f"{invoice_id}:{pos + 1}"
        installments.append(
            {
                "installment_id": inst_id,
                "installment_number": pos + 1,
                "due_date": to_date(inst.get("InstallmentDueDate"), f"installment {inst_id}: InstallmentDueDate"),
                "original_amount": to_decimal(inst.get("OriginalAmount"), f"installment {inst_id}: OriginalAmount"),
                "balance_due": to_decimal(inst.get("InstallmentBalanceDue"), f"installment {inst_id}: InstallmentBalanceDue"),
                "status": to_text(inst.get("InstallmentStatus")),
                "is_derived": False,
            }
        )

    total = to_decimal(p.get("EnteredAmount"), "EnteredAmount", required=True)
    balance = to_decimal(p.get("InvoiceBalanceAmount"), "InvoiceBalanceAmount")
    doc_type = document_type(to_text(p.get("TransactionType")), total)
    invoice = {
        "source_name": source_name,
        "source_type": "oracle_occ",
        "invoice_id": invoice_id,
        "invoice_number": to_text(p.get("TransactionNumber")),
        "status": status,
        "document_type": doc_type,
        "status_category": status_category(status in VOID_STATUSES, status in DRAFT_STATUSES, balance),
        "is_void": status in VOID_STATUSES,
        "is_truncated": truncated,
        "customer_id": to_text(p.get("BillToPartyId")),
        "customer_name": to_text(p.get("BillToCustomerName")),
        "invoice_date": to_date(p.get("TransactionDate"), "TransactionDate"),
        "due_date": to_date(p.get("DueDate"), "DueDate"),
        "currency_code": to_text(p.get("InvoiceCurrencyCode")),
        "freight_amount": to_decimal(p.get("FreightAmount"), "FreightAmount") or Decimal("0.0000"),
        "total_amount": total,
        "balance_due": balance,
        "payment_terms": to_text(p.get("PaymentTerms")),
        "purchase_order": to_text(p.get("PurchaseOrder")),
        "created_at": to_timestamp(p.get("CreationDate"), "CreationDate"),
        "last_modified_at": to_timestamp(p.get("LastUpdateDate"), "LastUpdateDate"),
    }
    conformed = ConformedInvoice(invoice, lines, tax_lines, installments)
    if doc_type == "credit_memo" and total > 0:  # documented negative; a tenant sending it positive is signed here
        negate_amounts(conformed)
    return conformed
