"""CRM.COM invoice -> conformed model (where each column comes from: COLUMN_SOURCES).

CRM.COM quirks handled here: amounts are JSON floats with binary noise (rounded to 4 places by
money.to_decimal, never formatted through a lossy string); timestamps are naive and in the
tenant's time zone; DRAFT invoices have no number; R12+ items carry `applied_tax_rates` while
older records only have the deprecated `vat_rate` / `vat_amount` (describing the same tax), and an
R12+ item may state its tax only in its own `tax_amount` (one tax line, without code or rate).
Document type from `type.classification`; a credit note sent with a positive total is signed here
(the conformed model holds what the customer owes).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from invoice_pipeline.conformed import NO_INSTALLMENTS, NOT_PROVIDED, ConformedInvoice, negate_amounts, status_category
from invoice_pipeline.money import QUANTITY, RATE, MappingError, to_decimal, to_text, to_timestamp
from invoice_pipeline.sources.mapping_kit import nested_object as _obj
from invoice_pipeline.sources.mapping_kit import objects, required_text

# The stored `status` values that mean void and draft: status_category and is_void are computed from
# them here, and upgrade.py builds its SQL for rows an earlier release wrote from the same constants.
VOID_STATUSES = ("CANCELLED", "REJECTED")
DRAFT_STATUSES = ("DRAFT",)
ZERO = Decimal("0.0000")
_TENANT_TZ = " (naive: in the tenant's time zone)"

# Where each conformed column comes from (the warehouse's column comments are built from this).
COLUMN_SOURCES: dict[str, dict[str, str]] = {
    "invoices": {
        "invoice_id": "id",
        "invoice_number": "number (null for DRAFT)",
        "status": "life_cycle_state",
        "document_type": "type.classification (INVOICE: invoice, CREDIT_NOTE: credit_memo, other values: other, "
                         "absent: invoice)",
        "status_category": "life_cycle_state CANCELLED or REJECTED: void, DRAFT: draft",
        "is_truncated": "always false (items come whole)",
        "customer_id": "accounts_receivable.id",
        "customer_name": "accounts_receivable.name",
        "invoice_date": "issued_on, as a date in the tenant's time zone",
        "due_date": "due_on, as a date in the tenant's time zone",
        "currency_code": "currency_rate_period.currency.code, else the source config's currency",
        "freight_amount": "none sent: 0",
        "total_amount": "total_amount (a credit note sent positive is negated)",
        "balance_due": "outstanding_amount",
        "payment_terms": NOT_PROVIDED,
        "purchase_order": NOT_PROVIDED,
        "created_at": "log_information.created_date" + _TENANT_TZ,
        "last_modified_at": "log_information.updated_date" + _TENANT_TZ,
    },
    "invoice_lines": {
        "line_id": "invoice_item_set.id",
        "line_number": "1-based position in invoice_item_set",
        "item_code": "product.code",
        "description": "product.description",
        "quantity": "quantity",
        "unit_of_measure": NOT_PROVIDED,
        "unit_price": NOT_PROVIDED + " (`cost` is the product's cost, not its price)",
        "line_amount": "net_amount - discount_amount",
    },
    "invoice_tax_lines": {
        "tax_line_id": "'<item id>:<tax_rates id>' of applied_tax_rates; older records: '<item id>:<vat_rate id>', "
                       "or '<item id>:tax' when the item states only its tax_amount",
        "line_id": "the item (invoice_item_set.id)",
        "tax_code": "tax_rates.alternative_code, else vat_rate.alternative_code (null when the item states only its "
                    "tax_amount)",
        "tax_rate": "applied_tax_rates tax_percentage, else vat_percentage (null when the item states only its "
                    "tax_amount)",
        "taxable_amount": "the item's line amount (net_amount - discount_amount)",
        "tax_amount": "applied_tax_rates tax_amount, else vat_amount, else the item's own tax_amount",
        "is_derived": "true for vat_* fields or the item's tax_amount, false for applied_tax_rates",
    },
    "invoice_installments": NO_INSTALLMENTS,
}


def local_date(value: Any, field: str, timezone: str) -> date | None:
    """The calendar date in the tenant's zone (naive values already are local; aware ones are converted)."""
    ts = to_timestamp(value, field, timezone)
    return None if ts is None else ts.astimezone(ZoneInfo(timezone)).date()


def _tax_lines(item: dict[str, Any], line_id: str, line_amount: Decimal, where: str) -> list[dict[str, Any]]:
    applied = item.get("applied_tax_rates")
    if applied:
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for pos, entry in enumerate(objects(applied, f"{where}applied_tax_rates")):
            rate = _obj(entry, "tax_rates", f"{where}applied_tax_rates[{pos}].")
            rate_id = to_text(rate.get("id")) or str(pos + 1)
            key = f"{line_id}:{rate_id}"
            if key in seen:  # the same rate twice on one item: keep both, keys stay unique
                key = f"{key}:{pos + 1}"
            seen.add(key)
            rows.append(
                {
                    "tax_line_id": key,
                    "line_id": line_id,
                    "tax_code": to_text(rate.get("alternative_code")),
                    "tax_rate": to_decimal(entry.get("tax_percentage"), f"{where}applied_tax_rates[{pos}].tax_percentage", RATE),
                    "taxable_amount": line_amount,
                    "tax_amount": to_decimal(
                        entry.get("tax_amount"), f"{where}applied_tax_rates[{pos}].tax_amount", required=True
                    ),
                    "is_derived": False,
                }
            )
        return rows
    # Older records (before R12): one VAT per item in the deprecated fields; a zero rate is still a tax line.
    vat_rate = _obj(item, "vat_rate", where)
    if item.get("vat_amount") is None:
        if to_decimal(item.get("vat_percentage"), f"{where}vat_percentage", RATE):
            raise MappingError(f"{where}vat_amount: missing although vat_percentage is set")
        own = to_decimal(item.get("tax_amount"), f"{where}tax_amount")
        if own is None:
            return []  # untaxed item
        # R12+: the item's tax only in its own tax_amount, no rate object: one tax line without code or rate.
        return [
            {
                "tax_line_id": f"{line_id}:tax",
                "line_id": line_id,
                "tax_code": None,
                "tax_rate": None,
                "taxable_amount": line_amount,
                "tax_amount": own,
                "is_derived": True,
            }
        ]
    return [
        {
            "tax_line_id": f"{line_id}:{to_text(vat_rate.get('id')) or 'vat'}",
            "line_id": line_id,
            "tax_code": to_text(vat_rate.get("alternative_code")),
            "tax_rate": to_decimal(item.get("vat_percentage"), f"{where}vat_percentage", RATE),
            "taxable_amount": line_amount,
            "tax_amount": to_decimal(item.get("vat_amount"), f"{where}vat_amount", required=True),
            "is_derived": True,
        }
    ]


def map_invoice(p: dict[str, Any], source_name: str, *, timezone: str = "UTC", currency: str = "USD") -> ConformedInvoice:
    """One invoice of `invoices/list` to the conformed header, lines and tax lines."""
    invoice_id = required_text(p, "id")
    items = objects(p.get("invoice_item_set") or [], "invoice_item_set")

    lines: list[dict[str, Any]] = []
    tax_lines: list[dict[str, Any]] = []
    for pos, item in enumerate(items):
        line_id = to_text(item.get("id"))
        if not line_id:
            raise MappingError(f"invoice_item_set[{pos}].id: missing")
        where = f"invoice item {line_id}: "
        product = _obj(item, "product", where)
        net = to_decimal(item.get("net_amount"), where + "net_amount", required=True)
        discount = to_decimal(item.get("discount_amount"), where + "discount_amount") or ZERO
        line_amount = net - discount  # after discount, before tax
        lines.append(
            {
                "line_id": line_id,
                "line_number": pos + 1,  # CRM.COM items have no number: 1-based position
                "item_code": to_text(product.get("code")),
                "description": to_text(product.get("description")),
                "quantity": to_decimal(item.get("quantity"), where + "quantity", QUANTITY),
                "unit_of_measure": None,
                "unit_price": None,  # not in the payload (`cost` is the product's cost, not its price)
                "line_amount": line_amount,
            }
        )
        tax_lines.extend(_tax_lines(item, line_id, line_amount, where))

    ar = _obj(p, "accounts_receivable", "")
    log_info = _obj(p, "log_information", "")
    rate_period = _obj(p, "currency_rate_period", "")
    status = to_text(p.get("life_cycle_state"))
    total = to_decimal(p.get("total_amount"), "total_amount", required=True)
    balance = to_decimal(p.get("outstanding_amount"), "outstanding_amount")
    doc_type = document_type(p)
    invoice = {
        "source_name": source_name,
        "source_type": "crmcom",
        "invoice_id": invoice_id,
        "invoice_number": to_text(p.get("number")),  # null for DRAFT invoices
        "status": status,
        "document_type": doc_type,
        "status_category": status_category(status in VOID_STATUSES, status in DRAFT_STATUSES, balance),
        "is_void": status in VOID_STATUSES,
        "is_truncated": False,
        "customer_id": to_text(ar.get("id")),
        "customer_name": to_text(ar.get("name")),
        "invoice_date": local_date(p.get("issued_on"), "issued_on", timezone),
        "due_date": local_date(p.get("due_on"), "due_on", timezone),
        "currency_code": to_text(_obj(rate_period, "currency", "currency_rate_period.").get("code")) or currency,
        "freight_amount": ZERO,  # CRM.COM invoices carry no freight
        "total_amount": total,
        "balance_due": balance,
        "payment_terms": None,
        "purchase_order": None,
        "created_at": to_timestamp(log_info.get("created_date"), "log_information.created_date", timezone),
        "last_modified_at": to_timestamp(log_info.get("updated_date"), "log_information.updated_date", timezone),
    }
    conformed = ConformedInvoice(invoice, lines, tax_lines)
    if doc_type == "credit_memo" and total > 0:
        negate_amounts(conformed)
    return conformed


def document_type(p: dict[str, Any]) -> str:
    """type.classification: INVOICE -> invoice, CREDIT_NOTE -> credit_memo, other values -> other; absent -> invoice."""
    classification = to_text(_obj(p, "type", "").get("classification"))
    if classification is None or classification.upper() == "INVOICE":
        return "invoice"
    return "credit_memo" if classification.upper() == "CREDIT_NOTE" else "other"
