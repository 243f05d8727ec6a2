"""Fakebill invoice -> conformed model: a flat header with `lines` (each carrying its tax)."""

from __future__ import annotations

from typing import Any

from invoice_pipeline.conformed import CONFORMED_TABLES, NO_INSTALLMENTS, NOT_PROVIDED, source_columns
from invoice_pipeline.money import MappingError, to_date, to_decimal, to_text, to_timestamp
from invoice_pipeline.sources.base import ConformedInvoice

# Where each conformed column comes from (the warehouse's column comments are built from it).
_FIELDS = {
    "invoices": {"invoice_id": "id", "invoice_number": "number", "status": "status", "customer_id": "customer.id",
                 "customer_name": "customer.name", "invoice_date": "issued", "due_date": "due",
                 "currency_code": "currency", "total_amount": "total", "balance_due": "balance",
                 "last_modified_at": "updated"},
    "invoice_lines": {"line_id": "lines[].id", "line_number": "position in lines[]",
                      "description": "lines[].description", "line_amount": "lines[].amount"},
    "invoice_tax_lines": {"tax_line_id": "lines[].id", "line_id": "lines[].id", "tax_amount": "lines[].tax",
                          "is_derived": "always true: one tax row per line"},
}
COLUMN_SOURCES = {table: {c: _FIELDS.get(table, {}).get(c, NOT_PROVIDED) for c in source_columns(table)}
                  for table in CONFORMED_TABLES}
COLUMN_SOURCES["invoice_installments"] = NO_INSTALLMENTS
VOID_STATUSES = ("void",)  # is_void below; upgrade.py's SQL reads it too


def map_invoice(p: dict[str, Any], source_name: str) -> ConformedInvoice:
    invoice_id = to_text(p.get("id"))
    if not invoice_id:
        raise MappingError("id: missing")
    lines, tax_lines = [], []
    for pos, item in enumerate(p.get("lines") or []):
        line_id = to_text(item.get("id")) if isinstance(item, dict) else None
        if not line_id:
            raise MappingError(f"invoice {invoice_id}: lines[{pos}].id: missing")
        lines.append({"line_id": line_id, "line_number": pos + 1, "description": to_text(item.get("description")),
                      "line_amount": to_decimal(item.get("amount"), f"line {line_id}: amount", required=True)})
        tax_lines.append({"tax_line_id": line_id, "line_id": line_id, "is_derived": True,
                          "tax_amount": to_decimal(item.get("tax"), f"line {line_id}: tax", required=True)})
    customer = p.get("customer") if isinstance(p.get("customer"), dict) else {}
    invoice = {
        "source_name": source_name,
        "source_type": "fakebill",
        "invoice_id": invoice_id,
        "invoice_number": to_text(p.get("number")),
        "status": to_text(p.get("status")),
        "is_void": p.get("status") in VOID_STATUSES,
        "customer_id": to_text(customer.get("id")),
        "customer_name": to_text(customer.get("name")),
        "invoice_date": to_date(p.get("issued"), "issued"),
        "due_date": to_date(p.get("due"), "due"),
        "currency_code": to_text(p.get("currency")),
        "total_amount": to_decimal(p.get("total"), "total", required=True),
        "balance_due": to_decimal(p.get("balance"), "balance", required=True),
        "last_modified_at": to_timestamp(p.get("updated"), "updated"),
    }
    return ConformedInvoice(invoice, lines, tax_lines)
