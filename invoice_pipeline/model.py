"""The core model: the types every layer shares and the column lists of every table the pipeline writes.

Each table is one list of `Column`s (name, DuckDB type, description); its DDL and its Arrow schema
are generated from that list, so the warehouse's tables and the Arrow batches written into them
cannot drift apart. Nothing here imports anything of the package (it is the bottom layer).

- `Window`, `SourceRecord`, `ConformedInvoice`: what a source yields and what its mapping returns;
  `LoadBatch`: one batch made ready to write (batch.py prepares it, the warehouse writes it);
- the conformed tables (`CONFORMED`): columns, key and table comment (docs/DATA_DICTIONARY.md is
  generated from the comments; per-source provenance is added by conformed_docs.py);
- the per-source bookkeeping tables: the raw payloads (`RAW_COLUMNS`), the quarantine, and the
  meta columns every flattened table starts with (`ROOT_META_COLUMNS`, `CHILD_META_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

# -- SQL types and their Arrow twins -------------------------------------------------------------------
MONEY_T = "DECIMAL(18,4)"  # every amount (money.MONEY rounds to its places and range)
QTY_T = "DECIMAL(18,6)"  # quantities and unit prices (money.QUANTITY)
RATE_T = "DECIMAL(12,6)"  # tax rates in percent (money.RATE)
TS = pa.timestamp("us", tz="UTC")  # TIMESTAMPTZ: every timestamp is UTC-aware

_ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BOOLEAN": pa.bool_(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DATE": pa.date32(),
    "TIMESTAMPTZ": TS,
}


def arrow_type(sql_type: str) -> pa.DataType:
    """The Arrow type a DuckDB column type is written from (DECIMAL(p,s) -> decimal128(p, s))."""
    if sql_type.startswith("DECIMAL(") and sql_type.endswith(")"):
        precision, scale = (int(x) for x in sql_type[8:-1].split(","))
        return pa.decimal128(precision, scale)
    try:
        return _ARROW_TYPES[sql_type]
    except KeyError:
        raise ValueError(f"no Arrow type for the SQL type {sql_type!r}") from None


@dataclass(frozen=True)
class Column:
    """One column: name, DuckDB type, and what it means (its COMMENT).

    by_pipeline: the pipeline sets it the same way for every source (keys, totals from the
    children, bookkeeping), so no source declares where it comes from.
    """

    name: str
    sql_type: str
    description: str
    by_pipeline: bool = False


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def column_ddl(columns: Iterable[Column]) -> str:
    """The column list of a CREATE TABLE: '"a" VARCHAR, "b" DECIMAL(18,4)'."""
    return ", ".join(f"{_quote(c.name)} {c.sql_type}" for c in columns)


def arrow_schema(columns: Iterable[Column]) -> pa.Schema:
    return pa.schema([(c.name, arrow_type(c.sql_type)) for c in columns])


@dataclass(frozen=True)
class Table:
    """A table the pipeline writes: its columns, key and comment; DDL and Arrow schema derived."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    comment: str = ""
    names: tuple[str, ...] = field(init=False)
    allowed: frozenset[str] = field(init=False)  # for the cheap unknown-key check of rows
    schema: pa.Schema = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(c.name for c in self.columns)
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: a column is listed twice")
        if not set(self.key) <= set(names):
            raise ValueError(f"table {self.name}: key {self.key} names a column it does not have")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "allowed", frozenset(names))
        object.__setattr__(self, "schema", arrow_schema(self.columns))

    @property
    def ddl(self) -> str:
        """The column list of its CREATE TABLE."""
        return column_ddl(self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name!r}")


class UnknownColumnError(ValueError):
    """A row names a column its table does not have: a mapping bug (e.g. a misspelt key).

    Raised per record while finalizing (prepare_batch quarantines that record with this message)
    and by conformed.to_arrow, so the bug can never turn into a silently NULL column.
    """


def check_row(table: Table, row: dict[str, Any]) -> None:
    """Raise UnknownColumnError naming the table and the key when `row` has a key `table` lacks."""
    if not table.allowed.issuperset(row):  # C-level, ~0.1 us a row: cheap enough for every row
        unknown = sorted(str(k) for k in row if k not in table.allowed)
        raise UnknownColumnError(
            f"conformed table {table.name} has no column {', '.join(repr(k) for k in unknown)} "
            f"(its columns: {', '.join(table.names)})")


# -- what a source yields and its mapping returns --------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """Modification-time window to extract; both ends inclusive, UTC."""

    start: datetime
    end: datetime


@dataclass
class SourceRecord:
    """One raw invoice as extracted: its key, its version (last modification) and the payload."""

    invoice_id: str
    last_modified_at: datetime | None
    payload: dict[str, Any]


@dataclass
class ConformedInvoice:
    """One invoice mapped to the conformed model: header plus its child rows.

    Rows are dicts keyed by the columns of INVOICES, INVOICE_LINES, INVOICE_TAX_LINES and
    INVOICE_INSTALLMENTS; conformed.finalize rejects any other key (UnknownColumnError).
    """

    invoice: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list)
    tax_lines: list[dict[str, Any]] = field(default_factory=list)
    installments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LoadBatch:
    """Everything one batch writes, prepared (batch.prepare_batch) outside the writer lock."""

    source_name: str
    run_id: str
    loaded_at: datetime
    keys: pa.Table  # KEYS_SCHEMA: invoice_id, last_modified_at of the mapped records
    flat: dict[str, pa.Table]  # table path -> rows (columns: JSON paths and the meta columns)
    conformed: dict[str, pa.Table]  # conformed table -> rows of this batch (its Table.schema)
    raw: pa.Table  # RAW_SCHEMA
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    cursor: datetime | None = None  # set on the last batch of a successful incremental run


# -- the conformed tables (schema main) -----------------------------------------------------------------
_CHILD_CURRENCY = "Currency of the amounts: the invoice's currency_code (main.invoices)."
_SOURCE_NAME = Column("source_name", "VARCHAR", "Configured source name.", by_pipeline=True)
_PARENT = Column("invoice_id", "VARCHAR", "Parent invoice (main.invoices).", by_pipeline=True)
_CURRENCY = Column("currency_code", "VARCHAR", _CHILD_CURRENCY, by_pipeline=True)

INVOICES = Table(
    "invoices",
    (
        Column("source_name", "VARCHAR", "Configured source name (schema holding its raw tables).", by_pipeline=True),
        Column("source_type", "VARCHAR", "Source system type (the `type:` of the source's config).", by_pipeline=True),
        Column("invoice_id", "VARCHAR", "Source key of the invoice."),
        Column("invoice_number", "VARCHAR", "Invoice number as the customer sees it."),
        Column("status", "VARCHAR", "Status as the source names it."),
        Column("document_type", "VARCHAR", "invoice, credit_memo, debit_memo or other."),
        Column("status_category", "VARCHAR", "draft, open, paid or void: void and draft as the source says; otherwise "
                                             "paid when balance_due = 0, else open."),
        Column("is_void", "BOOLEAN", "status_category = 'void': voided, cancelled or rejected at the source.",
               by_pipeline=True),
        Column("is_truncated", "BOOLEAN", "The source returned an incomplete child collection: lines/taxes may be missing."),
        Column("is_deleted", "BOOLEAN", "The invoice is gone from the source's list endpoint (detected by "
                                        "reconciliation); kept, never erased.", by_pipeline=True),
        Column("deleted_detected_at", "TIMESTAMPTZ", "When the pipeline first found the invoice missing at the source "
                                                     "(null unless is_deleted).", by_pipeline=True),
        Column("customer_id", "VARCHAR", "Billed customer's id at the source."),
        Column("customer_name", "VARCHAR", "Billed customer's name."),
        Column("invoice_date", "DATE", "Date of the invoice."),
        Column("due_date", "DATE", "Date payment is due."),
        Column("currency_code", "VARCHAR", "Currency of every amount of the invoice and its child rows."),
        Column("net_amount", MONEY_T, "Sum of line_amount of the invoice's conformed lines (signed like them).",
               by_pipeline=True),
        Column("tax_amount", MONEY_T, "Sum of tax_amount of the invoice's conformed tax lines.", by_pipeline=True),
        Column("freight_amount", MONEY_T, "Freight charged on the header, part of total_amount (0 when none)."),
        Column("total_amount", MONEY_T, "Header total = net_amount + tax_amount + freight_amount. Signed: <= 0 for "
                                        "a credit memo."),
        Column("balance_due", MONEY_T, "What the customer still owes (<= 0 for a credit memo)."),
        Column("payment_terms", "VARCHAR", "Payment terms as the source names them, where it has any."),
        Column("purchase_order", "VARCHAR", "Customer purchase order reference, where the source has one."),
        Column("created_at", "TIMESTAMPTZ", "Creation time in UTC."),
        Column("last_modified_at", "TIMESTAMPTZ", "Last modification time in UTC: the version of this row."),
        Column("_loaded_at", "TIMESTAMPTZ", "When the pipeline wrote this version.", by_pipeline=True),
        Column("_run_id", "VARCHAR", "Pipeline run that wrote this version.", by_pipeline=True),
    ),
    key=("source_name", "invoice_id"),
    comment="One row per invoice, credit memo or debit memo of every source (key source_name, invoice_id), "
            "amounts signed as owed by the customer: total_amount = net_amount + tax_amount + freight_amount.",
)
INVOICE_LINES = Table(
    "invoice_lines",
    (
        _SOURCE_NAME,
        _PARENT,
        Column("line_id", "VARCHAR", "Source key of the line."),
        Column("line_number", "INTEGER", "Line number."),
        Column("item_code", "VARCHAR", "Product or item code."),
        Column("description", "VARCHAR", "Line description (product name)."),
        Column("quantity", QTY_T, "Quantity (<= 0 on a credit memo)."),
        Column("unit_of_measure", "VARCHAR", "Unit of the quantity."),
        Column("unit_price", QTY_T, "Price of one unit."),
        Column("line_amount", MONEY_T, "After discounts, before tax; <= 0 on a credit memo."),
        _CURRENCY,
    ),
    key=("source_name", "invoice_id", "line_id"),
    comment="Lines of main.invoices (key source_name, invoice_id, line_id); line_amount after discounts, before tax.",
)
INVOICE_TAX_LINES = Table(
    "invoice_tax_lines",
    (
        _SOURCE_NAME,
        _PARENT,
        Column("tax_line_id", "VARCHAR", "Source key of the tax line (derived where the source has none)."),
        Column("line_id", "VARCHAR", "Taxed line (null for header-level tax)."),
        Column("tax_code", "VARCHAR", "Tax code."),
        Column("tax_rate", RATE_T, "Percentage (19 means 19%)."),
        Column("taxable_amount", MONEY_T, "Taxable base."),
        Column("tax_amount", MONEY_T, "Tax; <= 0 on a credit memo."),
        Column("is_derived", "BOOLEAN", "Computed by the pipeline, not a source object."),
        _CURRENCY,
    ),
    key=("source_name", "invoice_id", "tax_line_id"),
    comment="Tax lines of main.invoices (key source_name, invoice_id, tax_line_id); line_id null for header-level tax.",
)
INVOICE_INSTALLMENTS = Table(
    "invoice_installments",
    (
        _SOURCE_NAME,
        _PARENT,
        Column("installment_id", "VARCHAR", "Source key of the installment; a derived installment uses the invoice id."),
        Column("installment_number", "INTEGER", "1-based position in the source's installment list (1 for a derived one)."),
        Column("due_date", "DATE", "Due date of the installment; derived: the invoice due date."),
        Column("original_amount", MONEY_T, "<= 0 on a credit memo; derived: the invoice total."),
        Column("balance_due", MONEY_T, "What is still owed of it; derived: the invoice balance due."),
        Column("status", "VARCHAR", "Status as the source names it; derived: Open, Closed (nothing due) or Void."),
        Column("is_derived", "BOOLEAN", "One derived installment per invoice for sources without installments.",
               by_pipeline=True),
        _CURRENCY,
    ),
    key=("source_name", "invoice_id", "installment_id"),
    comment="Installments of main.invoices (key source_name, invoice_id, installment_id); sources without "
            "installments get one derived installment per invoice (is_derived).",
)
CONFORMED: dict[str, Table] = {t.name: t for t in (INVOICES, INVOICE_LINES, INVOICE_TAX_LINES, INVOICE_INSTALLMENTS)}

# -- per-source bookkeeping tables (schema <source name>) ------------------------------------------------
RAW_COLUMNS = (  # <source>._raw_invoices: every distinct payload, kept once
    Column("invoice_id", "VARCHAR", "Source key of the invoice."),
    Column("last_modified_at", "TIMESTAMPTZ", "Version of the payload (UTC)."),
    Column("payload_sha256", "VARCHAR", "SHA-256 of the payload's JSON text (sorted keys)."),
    Column("payload", "VARCHAR", "The payload as the API sent it (JSON text)."),
    Column("run_id", "VARCHAR", "Run that extracted it."),
    Column("extracted_at", "TIMESTAMPTZ", "When that run started."),
)
QUARANTINE_COLUMNS = (  # <source>._quarantine: records that could not be loaded, with why
    Column("invoice_id", "VARCHAR", "Source key, when the record has one."),
    Column("reason", "VARCHAR", "Why it was not loaded (names the field)."),
    Column("payload", "VARCHAR", "The payload as sent (JSON text)."),
    Column("run_id", "VARCHAR", "Run that found it."),
    Column("detected_at", "TIMESTAMPTZ", "When that run started."),
)
KEYS_COLUMNS = (  # a batch's mapped records, what the merge compares with the stored versions
    Column("invoice_id", "VARCHAR", "Source key of the invoice."),
    Column("last_modified_at", "TIMESTAMPTZ", "Version of the invoice (UTC)."),
)
RAW_DDL = column_ddl(RAW_COLUMNS)
QUARANTINE_DDL = column_ddl(QUARANTINE_COLUMNS)
RAW_SCHEMA = arrow_schema(RAW_COLUMNS)
QUARANTINE_SCHEMA = arrow_schema(QUARANTINE_COLUMNS)
KEYS_SCHEMA = arrow_schema(KEYS_COLUMNS)

# Meta columns of the flattened tables: the root table (one row per invoice) and every child table
# (one row per array item). JSON paths never collide with them (flatten.FIELD prefixes every path).
ROOT_META_COLUMNS = (
    Column("_invoice_id", "VARCHAR", "The invoice's key at the source."),
    Column("_last_modified_at", "TIMESTAMPTZ", "The source's last-modified time of this version (UTC)."),
    Column("_loaded_at", "TIMESTAMPTZ", "When the pipeline wrote this version (UTC)."),
    Column("_run_id", "VARCHAR", "The pipeline run that wrote it (main._pipeline_runs.run_id)."),
)
CHILD_META_COLUMNS = (
    Column("_invoice_id", "VARCHAR", "Source key of the invoice the row belongs to."),
    Column("_row_id", "VARCHAR", "Row id within the invoice ('3', or '3.1' for the 2nd item under the 4th parent item)."),
    Column("_parent_row_id", "VARCHAR", "Row id of the parent row (null under the root)."),
    Column("_position", "INTEGER", "0-based position of the item in its array."),
)
ROOT_META: tuple[str, ...] = tuple(c.name for c in ROOT_META_COLUMNS)
CHILD_META: tuple[str, ...] = tuple(c.name for c in CHILD_META_COLUMNS)
# name -> DuckDB type, for the warehouse's CREATE TABLE of flattened tables
ROOT_META_TYPES: dict[str, str] = {c.name: c.sql_type for c in ROOT_META_COLUMNS}
CHILD_META_TYPES: dict[str, str] = {c.name: c.sql_type for c in CHILD_META_COLUMNS}
ROOT_META_DDL = column_ddl(ROOT_META_COLUMNS)
CHILD_META_DDL = column_ddl(CHILD_META_COLUMNS)
# name -> Arrow type of every meta column (flattened rows' other columns are text)
META_ARROW: dict[str, pa.DataType] = {c.name: arrow_type(c.sql_type) for c in (*ROOT_META_COLUMNS, *CHILD_META_COLUMNS)}
