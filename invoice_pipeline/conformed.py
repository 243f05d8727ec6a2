"""The conformed model: its tables (defined in model.py), derived rows, provenance comments, Arrow conversion.

Plain Python: a source's mapping returns a ConformedInvoice; `finalize` adds what is derived the
same way for every source (net and tax totals from the children, a derived installment) and rejects
a row key that is no column of its table. Each source's mapping declares where each conformed column
comes from (COLUMN_SOURCES in sources/<type>/mapping.py); `documented_tables` joins those
declarations to the columns' descriptions for the warehouse's COMMENTs (conformed_docs.py collects
them from the registered sources).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa

from invoice_pipeline.model import (
    CONFORMED,
    INVOICE_INSTALLMENTS,
    INVOICE_LINES,
    INVOICE_TAX_LINES,
    INVOICES,
    MONEY_T,
    QTY_T,
    RATE_T,
    ConformedInvoice,
    Table,
    UnknownColumnError,
    check_row,
)

__all__ = [
    "ARROW_SCHEMAS", "CONFORMED", "CONFORMED_KEYS", "CONFORMED_TABLES", "MONEY_T", "NO_INSTALLMENTS", "NOT_PROVIDED", "QTY_T", "RATE_T",
    "TABLE_COMMENTS", "ConformedInvoice", "UnknownColumnError", "documented_tables", "finalize", "negate_amounts",
    "provenance_problems", "source_columns", "status_category", "to_arrow",
]

# column -> (DuckDB type, description): the shape the warehouse, the catalog and the tests read.
# The descriptions hold no per-source provenance; documented_tables() adds it.
CONFORMED_TABLES: dict[str, dict[str, tuple[str, str]]] = {
    name: {c.name: (c.sql_type, c.description) for c in table.columns} for name, table in CONFORMED.items()
}
TABLE_COMMENTS: dict[str, str] = {name: table.comment for name, table in CONFORMED.items()}
CONFORMED_KEYS: dict[str, tuple[str, ...]] = {name: table.key for name, table in CONFORMED.items()}
ARROW_SCHEMAS: dict[str, pa.Schema] = {name: table.schema for name, table in CONFORMED.items()}

# -- provenance: where each source takes each column from ------------------------------------------------
# A mapping's COLUMN_SOURCES value for a column the source has no field for (the column is null, or
# the default its mapping sets, for that source's rows).
NOT_PROVIDED = "not provided"
# COLUMN_SOURCES["invoice_installments"] of a source without installment objects: finalize derives one
# per invoice (see the columns' descriptions).
NO_INSTALLMENTS: dict[str, str] = {
    c.name: "none at the source: derived" for c in INVOICE_INSTALLMENTS.columns if not c.by_pipeline}
# Provenance of one source type: conformed table -> column -> where the value comes from.
Provenance = Mapping[str, Mapping[str, str]]


def source_columns(table: str) -> tuple[str, ...]:
    """The columns of a conformed table every source declares provenance for (not set by the pipeline)."""
    return tuple(c.name for c in CONFORMED[table].columns if not c.by_pipeline)


def provenance_problems(source_type: str, declared: Provenance) -> list[str]:
    """What is wrong with a source's COLUMN_SOURCES: missing, unknown or pipeline-set columns, empty texts."""
    problems = [f"{source_type}: COLUMN_SOURCES has no conformed table {t!r}" for t in declared if t not in CONFORMED]
    for name, table in CONFORMED.items():
        given = declared.get(name, {})
        wanted = source_columns(name)
        problems += [f"{source_type}: {name}.{c}: no provenance (name the source field, or NOT_PROVIDED)"
                     for c in wanted if c not in given]
        problems += [f"{source_type}: {name}.{c}: " + ("set by the pipeline, not by the source" if c in table.allowed
                                                        else "no such column")
                     for c in given if c not in wanted]
        problems += [f"{source_type}: {name}.{c}: empty provenance" for c, text in given.items()
                     if not (isinstance(text, str) and text.strip())]
    return problems


def documented_tables(provenance: Mapping[str, Provenance]) -> dict[str, dict[str, tuple[str, str]]]:
    """CONFORMED_TABLES with each column's comment = description + where every source takes it from.

    `provenance`: source type -> its COLUMN_SOURCES. Raises ValueError when a declaration is
    incomplete or names a column that does not exist (a new source must document every column).
    """
    problems = [p for source_type, declared in provenance.items() for p in provenance_problems(source_type, declared)]
    if problems:
        raise ValueError("column provenance declarations (COLUMN_SOURCES) are incomplete:\n" + "\n".join(problems))
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for name, table in CONFORMED.items():
        out[name] = {}
        for c in table.columns:
            text = c.description
            if not c.by_pipeline and provenance:
                text += " Per source: " + "; ".join(
                    f"{source_type}: {declared[name][c.name]}" for source_type, declared in provenance.items()) + "."
            out[name][c.name] = (c.sql_type, text)
    return out


def status_category(void: bool, draft: bool, balance_due: Decimal | None) -> str:
    """The conformed status_category: void and draft as the source says, else paid when nothing is due."""
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
    """Totals from the children (net = sum of lines, tax = sum of tax lines), derived installment,
    the invoice's currency on every child row, is_void from status_category.

    Raises UnknownColumnError for a row key that is no column of its table (a mapping bug: the
    record is quarantined at run time, and a mapping test fails loudly).
    """
    inv = conformed.invoice
    check_row(INVOICES, inv)  # first: a misspelt key must not surface as a KeyError below
    for spec, rows in ((INVOICE_LINES, conformed.lines), (INVOICE_TAX_LINES, conformed.tax_lines),
                       (INVOICE_INSTALLMENTS, conformed.installments)):
        known = spec.allowed.issuperset  # bound once: this runs for every row of every record
        for row in rows:
            if not known(row):
                check_row(spec, row)  # raises, naming the table and the key
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


def to_arrow(table: str, rows: list[dict[str, Any]], *, checked: bool = False) -> pa.Table:
    """Rows (dicts with Decimal/date/datetime values) to an Arrow table of the exact conformed types.

    A row key that is no column of the table raises UnknownColumnError (never a silent NULL);
    checked=True skips that test for rows finalize() has already checked.
    """
    spec: Table = CONFORMED[table]
    if not checked:
        known = spec.allowed.issuperset  # bound once: this runs for every row of every record
        for row in rows:
            if not known(row):
                check_row(spec, row)  # raises, naming the table and the key
    schema = spec.schema
    return pa.table({name: pa.array([row.get(name) for row in rows], type=schema.field(name).type)
                     for name in schema.names})
