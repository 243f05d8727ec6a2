"""The conformed model (SPEC section 3): table definitions, derived rows, Arrow conversion.

Plain Python: a source's mapping returns a ConformedInvoice; `finalize` adds what is derived the
same way for every source (net and tax totals from the children, a derived installment).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa

from invoice_pipeline.sources.base import ConformedInvoice

MONEY_T = "DECIMAL(18,4)"
QTY_T = "DECIMAL(18,6)"
RATE_T = "DECIMAL(12,6)"

CHILD_CURRENCY = "Currency of the amounts: the invoice's currency_code (main.invoices)."
DOCUMENT_TYPES = ("invoice", "credit_memo", "debit_memo", "other")
STATUS_CATEGORIES = ("draft", "open", "paid", "void")

# column -> (DuckDB type, description used for COMMENT ON COLUMN)
INVOICE_COLUMNS: dict[str, tuple[str, str]] = {
    "source_name": ("VARCHAR", "Configured source name (schema holding its raw tables)."),
    "source_type": ("VARCHAR", "Source system type: oracle_occ, crmcom, softwareone, agvance."),
    "invoice_id": ("VARCHAR", "Source key. Oracle CustomerTransactionId; CRM.COM id; SoftwareOne id; Agvance InvoiceLocation-InvoiceNumber."),
    "invoice_number": ("VARCHAR", "Oracle TransactionNumber; CRM.COM number (null for DRAFT); SoftwareOne erpData.documentNo; Agvance InvoiceNumber."),
    "status": ("VARCHAR", "Oracle InvoiceStatus; CRM.COM life_cycle_state; SoftwareOne status; Agvance Void/Paid/Open."),
    "document_type": ("VARCHAR", "invoice, credit_memo, debit_memo or other. Oracle TransactionType (containing 'Credit Memo' or "
                                 "EnteredAmount < 0: credit_memo; 'Debit Memo': debit_memo; 'Chargeback': other; else invoice); "
                                 "CRM.COM type.classification (INVOICE: invoice, CREDIT_NOTE: credit_memo, other values: other, "
                                 "absent: invoice); SoftwareOne type (Debit: invoice, Credit: credit_memo); Agvance invoice "
                                 "(credit_memo when InvoiceTotal < 0)."),
    "status_category": ("VARCHAR", "draft, open, paid or void. void: Oracle InvoiceStatus Void, CRM.COM CANCELLED/REJECTED, "
                                   "SoftwareOne Cancelled, Agvance Void; draft: Oracle Incomplete, CRM.COM DRAFT; otherwise "
                                   "paid when balance_due = 0, else open."),
    "is_void": ("BOOLEAN", "status_category = 'void': voided, cancelled or rejected at the source."),
    "is_truncated": ("BOOLEAN", "The source returned an incomplete child collection: lines/taxes may be missing."),
    "is_deleted": ("BOOLEAN", "The invoice is gone from the source's list endpoint (detected by reconciliation); kept, never erased."),
    "deleted_detected_at": ("TIMESTAMPTZ", "When the pipeline first found the invoice missing at the source (null unless is_deleted)."),
    "customer_id": ("VARCHAR", "Oracle BillToPartyId; CRM.COM accounts_receivable.id; SoftwareOne buyer.id; Agvance CustomerID."),
    "customer_name": ("VARCHAR", "Oracle BillToCustomerName; CRM.COM accounts_receivable.name; SoftwareOne buyer.name; Agvance CustomerName."),
    "invoice_date": ("DATE", "Oracle TransactionDate; CRM.COM issued_on; SoftwareOne erpData.documentDate; Agvance InvoiceDate."),
    "due_date": ("DATE", "Oracle DueDate; CRM.COM due_on; SoftwareOne erpData.dueDate; Agvance DueDate."),
    "currency_code": ("VARCHAR", "Oracle InvoiceCurrencyCode; CRM.COM currency_rate_period.currency.code; SoftwareOne price.currency; Agvance config currency."),
    "net_amount": (MONEY_T, "Sum of line_amount of the invoice's conformed lines (signed like them)."),
    "tax_amount": (MONEY_T, "Sum of tax_amount of the invoice's conformed tax lines."),
    "freight_amount": (MONEY_T, "Freight charged on the header, part of total_amount: Oracle FreightAmount (null: 0); 0 for "
                                "CRM.COM, SoftwareOne and Agvance (they send none)."),
    "total_amount": (MONEY_T, "Header total = net_amount + tax_amount + freight_amount: Oracle EnteredAmount; CRM.COM "
                              "total_amount; SoftwareOne erpData.invoiceTotal; Agvance InvoiceTotal. Signed: <= 0 for a credit "
                              "memo (SoftwareOne sends Credit documents positive: negated here)."),
    "balance_due": (MONEY_T, "What the customer still owes (<= 0 for a credit memo): Oracle InvoiceBalanceAmount; CRM.COM "
                             "outstanding_amount; SoftwareOne erpData.balanceDue (negated for Credit); Agvance BalanceDue."),
    "payment_terms": ("VARCHAR", "Payment terms as the source names them, where it has any."),
    "purchase_order": ("VARCHAR", "Customer purchase order reference, where the source has one."),
    "created_at": ("TIMESTAMPTZ", "Creation time in UTC (null for Agvance)."),
    "last_modified_at": ("TIMESTAMPTZ", "Last modification time in UTC: the version of this row."),
    "_loaded_at": ("TIMESTAMPTZ", "When the pipeline wrote this version."),
    "_run_id": ("VARCHAR", "Pipeline run that wrote this version."),
}
LINE_COLUMNS: dict[str, tuple[str, str]] = {
    "source_name": ("VARCHAR", "Configured source name."),
    "invoice_id": ("VARCHAR", "Parent invoice (main.invoices)."),
    "line_id": ("VARCHAR", "Oracle CustomerTransactionLineId; CRM.COM invoice_item_set.id; SoftwareOne lines.id; Agvance LineNumber."),
    "line_number": ("INTEGER", "Oracle/Agvance LineNumber; SoftwareOne lineNo; CRM.COM 1-based position."),
    "item_code": ("VARCHAR", "Oracle ItemNumber; CRM.COM product code; SoftwareOne itemNo; Agvance ProductID."),
    "description": ("VARCHAR", "Oracle Description; CRM.COM product name; SoftwareOne description; Agvance ProductName."),
    "quantity": (QTY_T, "Oracle Quantity; CRM.COM quantity; SoftwareOne quantity (negated for Credit); Agvance Quantity."),
    "unit_of_measure": ("VARCHAR", "Oracle UnitOfMeasure; SoftwareOne unitOfMeasure; Agvance UnitOfMeasure; CRM.COM none."),
    "unit_price": (QTY_T, "Oracle UnitSellingPrice; CRM.COM unit price; SoftwareOne unitPrice; Agvance UnitPrice."),
    "line_amount": (MONEY_T, "After discounts, before tax; <= 0 on a credit memo. Oracle LineAmount; CRM.COM net_amount - "
                             "discount_amount; SoftwareOne lineAmount (negated for Credit); Agvance Extension."),
    "currency_code": ("VARCHAR", CHILD_CURRENCY),
}
TAX_LINE_COLUMNS: dict[str, tuple[str, str]] = {
    "source_name": ("VARCHAR", "Configured source name."),
    "invoice_id": ("VARCHAR", "Parent invoice (main.invoices)."),
    "tax_line_id": ("VARCHAR", "Source tax line key (derived for SoftwareOne and for CRM.COM records without applied_tax_rates: "
                               "'<item id>:<vat_rate id>' or '<item id>:tax')."),
    "line_id": ("VARCHAR", "Taxed line (null for header-level tax)."),
    "tax_code": ("VARCHAR", "Oracle Tax; CRM.COM tax rate alternative_code (null when the item states only its tax_amount); "
                            "Agvance TaxCode; SoftwareOne none."),
    "tax_rate": (RATE_T, "Percentage (19 means 19%). Oracle TaxRate when sent; CRM.COM tax rate percentage or vat_percentage "
                         "(null when the item states only its tax_amount); SoftwareOne vatPercent; Agvance TaxRate."),
    "taxable_amount": (MONEY_T, "Taxable base. Oracle TaxableAmount; SoftwareOne vatBaseAmount (negated for Credit); Agvance "
                                "TaxableAmount; CRM.COM line_amount of the item."),
    "tax_amount": (MONEY_T, "<= 0 on a credit memo. Oracle TaxAmount; CRM.COM applied_tax_rates tax_amount, else vat_amount, "
                            "else the item's own tax_amount; SoftwareOne amountIncludingVat - lineAmount (negated for Credit); "
                            "Agvance TaxAmount."),
    "is_derived": ("BOOLEAN", "Computed by the pipeline, not a source object (SoftwareOne; CRM.COM vat_* or item tax_amount)."),
    "currency_code": ("VARCHAR", CHILD_CURRENCY),
}
INSTALLMENT_COLUMNS: dict[str, tuple[str, str]] = {
    "source_name": ("VARCHAR", "Configured source name."),
    "invoice_id": ("VARCHAR", "Parent invoice (main.invoices)."),
    "installment_id": ("VARCHAR", "Oracle @context.key; derived installments use the invoice id."),
    "installment_number": ("INTEGER", "1-based position in the source's installment list (1 for derived ones)."),
    "due_date": ("DATE", "Oracle InstallmentDueDate; derived: the invoice due date."),
    "original_amount": (MONEY_T, "<= 0 on a credit memo. Oracle OriginalAmount; derived: the invoice total."),
    "balance_due": (MONEY_T, "Oracle InstallmentBalanceDue; derived: the invoice balance due."),
    "status": ("VARCHAR", "Oracle InstallmentStatus; derived: Open, Closed (nothing due) or Void."),
    "is_derived": ("BOOLEAN", "One derived installment per invoice for sources without installments."),
    "currency_code": ("VARCHAR", CHILD_CURRENCY),
}

CONFORMED_TABLES: dict[str, dict[str, tuple[str, str]]] = {
    "invoices": INVOICE_COLUMNS,
    "invoice_lines": LINE_COLUMNS,
    "invoice_tax_lines": TAX_LINE_COLUMNS,
    "invoice_installments": INSTALLMENT_COLUMNS,
}
TABLE_COMMENTS: dict[str, str] = {
    "invoices": "One row per invoice, credit memo or debit memo of every source (key source_name, invoice_id), "
                "amounts signed as owed by the customer: total_amount = net_amount + tax_amount + freight_amount.",
    "invoice_lines": "Lines of main.invoices (key source_name, invoice_id, line_id); line_amount after discounts, before tax.",
    "invoice_tax_lines": "Tax lines of main.invoices (key source_name, invoice_id, tax_line_id); line_id null for header-level tax.",
    "invoice_installments": "Installments of main.invoices (key source_name, invoice_id, installment_id); sources without "
                            "installments get one derived installment per invoice (is_derived).",
}
CONFORMED_KEYS: dict[str, tuple[str, ...]] = {
    "invoices": ("source_name", "invoice_id"),
    "invoice_lines": ("source_name", "invoice_id", "line_id"),
    "invoice_tax_lines": ("source_name", "invoice_id", "tax_line_id"),
    "invoice_installments": ("source_name", "invoice_id", "installment_id"),
}


def _arrow_type(sql_type: str) -> pa.DataType:
    if sql_type.startswith("DECIMAL"):
        precision, scale = (int(x) for x in sql_type[8:-1].split(","))
        return pa.decimal128(precision, scale)
    return {
        "VARCHAR": pa.string(),
        "BOOLEAN": pa.bool_(),
        "INTEGER": pa.int32(),
        "DATE": pa.date32(),
        "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    }[sql_type]


ARROW_SCHEMAS: dict[str, pa.Schema] = {
    table: pa.schema([(name, _arrow_type(t)) for name, (t, _) in cols.items()])
    for table, cols in CONFORMED_TABLES.items()
}


def status_category(void: bool, draft: bool, balance_due: Decimal | None) -> str:
    """SPEC's status_category: void and draft as the source says, else paid when nothing is due."""
    if void:
        return "void"
    if draft:
        return "draft"
    return "paid" if balance_due == 0 else "open"


# Amounts a credit document carries with the customer's sign (what is owed: <= 0 for a credit).
_SIGNED = {
    "invoice": ("total_amount", "balance_due", "freight_amount"),
    "lines": ("line_amount", "quantity"),
    "tax_lines": ("tax_amount", "taxable_amount"),
    "installments": ("original_amount", "balance_due"),
}


def negate_amounts(conformed: ConformedInvoice) -> ConformedInvoice:
    """Flip every signed amount of a credit a source sends with positive amounts (SoftwareOne Credit).

    Only the conformed rows change: the source's own tables keep the values as sent. Quantity flips
    with the line amount, so quantity x unit_price still gives the line amount.
    """
    def flip(row: dict[str, Any], names: tuple[str, ...]) -> None:
        for name in names:
            value = row.get(name)
            if value is not None:
                row[name] = -value if value else value  # never a negative zero

    flip(conformed.invoice, _SIGNED["invoice"])
    for table in ("lines", "tax_lines", "installments"):
        for row in getattr(conformed, table):
            flip(row, _SIGNED[table])
    return conformed


def finalize(conformed: ConformedInvoice, *, derive_installment: bool) -> ConformedInvoice:
    """Totals from the children (SPEC: net = sum of lines, tax = sum of tax lines), derived installment,
    the invoice's currency on every child row, is_void from status_category."""
    inv = conformed.invoice
    inv["net_amount"] = sum((ln["line_amount"] or Decimal(0) for ln in conformed.lines), Decimal("0.0000"))
    inv["tax_amount"] = sum((tl["tax_amount"] or Decimal(0) for tl in conformed.tax_lines), Decimal("0.0000"))
    if inv.get("freight_amount") is None:
        inv["freight_amount"] = Decimal("0.0000")
    inv.setdefault("document_type", "invoice")
    if inv.get("status_category") is None:
        inv["status_category"] = status_category(bool(inv.get("is_void")), False, inv.get("balance_due"))
    inv["is_void"] = inv["status_category"] == "void"
    inv.setdefault("is_truncated", False)
    inv.setdefault("is_deleted", False)  # a (re)loaded invoice exists at the source
    if derive_installment and not conformed.installments:
        conformed.installments.append(
            {
                "installment_id": inv["invoice_id"],
                "installment_number": 1,
                "due_date": inv.get("due_date"),
                "original_amount": inv.get("total_amount"),
                "balance_due": inv.get("balance_due"),
                "status": "Void" if inv.get("is_void") else ("Closed" if inv.get("balance_due") == 0 else "Open"),
                "is_derived": True,
            }
        )
    currency = inv.get("currency_code")
    for ln in conformed.lines:
        ln["currency_code"] = currency
    for tl in conformed.tax_lines:
        tl.setdefault("is_derived", False)
        tl["currency_code"] = currency
    for inst in conformed.installments:
        inst.setdefault("is_derived", False)
        inst["currency_code"] = currency
    return conformed


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with Decimal/date/datetime values) to an Arrow table of the exact conformed types."""
    schema = ARROW_SCHEMAS[table]
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names})
