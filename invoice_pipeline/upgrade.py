"""In-place upgrade of a warehouse written by an earlier release (no manual step).

Warehouse.ensure_main adds the columns a release introduces; this module fills them for the rows
written before, on the first run of the new release, in one transaction:

- main.invoices rows without `document_type` (written before document types, status categories,
  freight and signed credits existed) are mapped again from their kept raw payload (the source
  schema's `_raw_invoices`, the payload of the stored version): their document type, status
  category, freight, signed amounts and child rows (e.g. a CRM.COM item whose tax was only in its
  own `tax_amount` gains its tax line; a SoftwareOne Credit is negated). Everything else on the row
  (dates, currency, deletion marks, load bookkeeping) stays as stored, so settings the mapping
  needs (a CRM.COM time zone, a default currency) do not matter here.
- a row without a usable payload (none kept, or the newest one is not the stored version or no
  longer maps) gets what SQL can say: document_type from the sign of its total, status_category
  from its status and balance, freight 0. The audit checks then show what stays off.
- child rows get their invoice's `currency_code`;
- main.invoice_history's versions get the same columns (upgrade_history).

Idempotent: only rows whose new columns are still null are touched, so a run killed half-way
redoes the rest next time.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import duckdb
import pyarrow as pa

from invoice_pipeline import jsonio  # exact numbers, as the load parsed them
from invoice_pipeline.conformed import ARROW_SCHEMAS, CONFORMED_TABLES, finalize, to_arrow
from invoice_pipeline.lifecycle_tables import ensure_lifecycle_tables, version_hash_sql
from invoice_pipeline.model import ConformedInvoice
from invoice_pipeline.source_types import known_types, mapping_module, source_class
from invoice_pipeline.sql import quote, sql_literal

log = logging.getLogger("invoice_pipeline.upgrade")

BATCH = 2000
CHILD_TABLES = ("invoice_lines", "invoice_tax_lines", "invoice_installments")
# Header columns the remap may change; every other column keeps its stored value.
REMAPPED = ("document_type", "status_category", "is_void", "freight_amount", "total_amount", "balance_due",
            "net_amount", "tax_amount")

def _mapping(source_type: str) -> ModuleType | None:
    """A source type's mapping module (source_types.mapping_module), None when it has none."""
    try:
        name = mapping_module(source_type)
    except KeyError:  # a type no longer registered: its rows are filled from their stored columns
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the mapping exists but one of its own imports is missing: not ours to hide
        return None


def _declared(name: str) -> dict[str, Any]:
    """source type -> the value its mapping declares under `name`, for every registered type declaring it."""
    out = {}
    for source_type in known_types():
        module = _mapping(source_type)
        if module is not None and hasattr(module, name):
            out[source_type] = getattr(module, name)
    return out


def _types_where(source_type: str, types: Iterable[str]) -> str:
    """SQL: the row's source type is one of `types` (false when there is none)."""
    listed = ", ".join(sql_literal(t) for t in types)
    return f"{source_type} IN ({listed})" if listed else "false"


def status_category_sql(source_type: str = "source_type", status: str = "status", balance_due: str = "balance_due",
                        is_void: str = "is_void") -> str:
    """status_category of a stored row (as docs/DATA_DICTIONARY.md describes main.invoices.status_category):
    void and draft from the statuses each source's mapping declares (VOID_STATUSES, DRAFT_STATUSES: the
    constants it computes status_category with), a type declaring none void by its stored is_void."""
    voids, drafts = _declared("VOID_STATUSES"), _declared("DRAFT_STATUSES")

    def per_type(statuses: dict[str, Any]) -> list[str]:
        return [f"({source_type} = {sql_literal(t)} AND {status} IN ({', '.join(sql_literal(v) for v in values)}))"
                for t, values in statuses.items() if values]

    void = [*per_type(voids), f"(NOT ({_types_where(source_type, voids)}) AND coalesce({is_void}, false))"]
    draft = per_type(drafts) or ["false"]
    return f"""CASE
    WHEN {' OR '.join(void)} THEN 'void'
    WHEN {' OR '.join(draft)} THEN 'draft'
    WHEN {balance_due} = 0 THEN 'paid' ELSE 'open' END"""


def _mapper(source_type: str, source_name: str) -> tuple[Callable[[dict[str, Any]], ConformedInvoice], bool] | None:
    """The source type's mapping (its mapping module's map_invoice) with default settings, and whether
    the source has its own installments; None for a type without one."""
    module = _mapping(source_type)
    map_invoice = getattr(module, "map_invoice", None)
    if map_invoice is None:
        return None
    return (lambda p: map_invoice(p, source_name)), bool(source_class(source_type).has_installments)


def _has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? "
        "AND table_name = ?", [schema, table]).fetchone()[0] > 0


def pending(con: duckdb.DuckDBPyConnection) -> int:
    """Rows of main.invoices and its child tables still missing a column of this release."""
    total = con.execute("SELECT count(*) FROM main.invoices WHERE document_type IS NULL OR status_category IS NULL "
                        "OR freight_amount IS NULL").fetchone()[0]
    for table in CHILD_TABLES:
        total += con.execute(f"SELECT count(*) FROM main.{table} WHERE currency_code IS NULL").fetchone()[0]
    return total


def upgrade_conformed(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Fill this release's columns on rows an earlier release wrote (see module doc); returns counts."""
    counts = {"remapped": 0, "sql_filled": 0}
    history = _has_table(con, "main", "invoice_history")
    if history:
        ensure_lifecycle_tables(con)  # its new columns, so its old rows can be found and filled
        history = con.execute("SELECT count(*) FROM main.invoice_history WHERE document_type IS NULL").fetchone()[0] > 0
    if not pending(con) and not history:
        return counts
    con.execute("BEGIN TRANSACTION")
    try:
        sources = con.execute(
            "SELECT source_name, any_value(source_type) FROM main.invoices WHERE document_type IS NULL GROUP BY 1 ORDER BY 1"
        ).fetchall()
        for source_name, source_type in sources:
            counts["remapped"] += _remap_source(con, source_name, source_type)
        counts["sql_filled"] = _fill_by_sql(con)
        for table in CHILD_TABLES:
            con.execute(
                f"""UPDATE main.{table} AS c SET currency_code = i.currency_code FROM main.invoices AS i
                WHERE c.currency_code IS NULL AND i.source_name = c.source_name AND i.invoice_id = c.invoice_id"""
            )
        if history:
            counts["history_versions"] = upgrade_history(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("warehouse upgraded in place: %d invoices mapped again from their raw payloads, %d filled from "
             "their stored columns", counts["remapped"], counts["sql_filled"])
    return counts


def _remap_source(con: duckdb.DuckDBPyConnection, source_name: str, source_type: str) -> int:
    """Map again, from the kept raw payload of the stored version, every invoice of one source still
    missing document_type; rows that cannot be are left to _fill_by_sql."""
    mapper = _mapper(source_type, source_name)
    s = quote(source_name)
    if mapper is None or not _has_table(con, source_name, "_raw_invoices"):
        return 0
    to_conformed, has_installments = mapper
    # The newest payload of each invoice (as replay.py picks it), only when it is the stored version.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _upgrade_payloads AS
        SELECT i.invoice_id, r.payload_sha256, i.currency_code, i.due_date, row_number() OVER (ORDER BY i.invoice_id) AS n
        FROM main.invoices AS i JOIN (
            SELECT invoice_id, last_modified_at, payload_sha256, row_number() OVER (
              PARTITION BY invoice_id ORDER BY last_modified_at DESC NULLS LAST, extracted_at DESC, rowid DESC) AS rn
            FROM {s}._raw_invoices) AS r
          ON r.invoice_id = i.invoice_id AND r.rn = 1 AND r.last_modified_at IS NOT DISTINCT FROM i.last_modified_at
        WHERE i.source_name = ? AND i.document_type IS NULL""",
        [source_name],
    )
    total = con.execute("SELECT count(*) FROM _upgrade_payloads").fetchone()[0]
    done = 0
    for offset in range(0, total, BATCH):
        rows = con.execute(
            f"""SELECT u.invoice_id, r.payload, u.currency_code, u.due_date FROM _upgrade_payloads AS u
            JOIN {s}._raw_invoices AS r USING (invoice_id, payload_sha256) WHERE u.n > ? AND u.n <= ? ORDER BY u.n""",
            [offset, offset + BATCH],
        ).fetchall()
        headers: list[dict[str, Any]] = []
        children: dict[str, list[dict[str, Any]]] = {t: [] for t in CHILD_TABLES}
        for invoice_id, payload, currency, due_date in rows:
            try:
                mapped = to_conformed(jsonio.loads(payload))
                if mapped.invoice.get("invoice_id") != invoice_id:
                    continue
                mapped.invoice["currency_code"], mapped.invoice["due_date"] = currency, due_date  # as stored
                mapped = finalize(mapped, derive_installment=not has_installments)
            except Exception as exc:  # noqa: BLE001 - such a row keeps its children and is filled by SQL
                log.warning("source '%s': invoice %s: raw payload no longer maps (%s); filled from its stored "
                            "columns instead", source_name, invoice_id, exc)
                continue
            headers.append({c: mapped.invoice.get(c) for c in ("invoice_id", *REMAPPED)})
            for table, rows_ in (("invoice_lines", mapped.lines), ("invoice_tax_lines", mapped.tax_lines),
                                 ("invoice_installments", mapped.installments)):
                for row in rows_:
                    row["source_name"], row["invoice_id"] = source_name, invoice_id
                children[table].extend(rows_)
        if not headers:
            continue
        schema = pa.schema([ARROW_SCHEMAS["invoices"].field(c) for c in ("invoice_id", *REMAPPED)])
        con.register("_upgrade_headers", pa.Table.from_pylist(headers, schema=schema))
        assignments = ", ".join(f"{quote(c)} = h.{quote(c)}" for c in REMAPPED)
        con.execute(f"""UPDATE main.invoices AS i SET {assignments} FROM _upgrade_headers AS h
                    WHERE i.source_name = ? AND i.invoice_id = h.invoice_id""", [source_name])
        for table in CHILD_TABLES:
            con.execute(f"DELETE FROM main.{table} WHERE source_name = ? AND invoice_id IN "
                        "(SELECT invoice_id FROM _upgrade_headers)", [source_name])
            if children[table]:
                con.register("_upgrade_children", to_arrow(table, children[table]))
                columns = ", ".join(quote(c) for c in CONFORMED_TABLES[table])
                con.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM _upgrade_children")
                con.unregister("_upgrade_children")
        con.unregister("_upgrade_headers")
        done += len(headers)
    con.execute("DROP TABLE _upgrade_payloads")
    return done


def _fill_by_sql(con: duckdb.DuckDBPyConnection) -> int:
    """What the stored columns alone say, for rows the remap could not reach."""
    n = con.execute("SELECT count(*) FROM main.invoices WHERE document_type IS NULL OR status_category IS NULL "
                    "OR freight_amount IS NULL").fetchone()[0]
    if n:
        con.execute(
            f"""UPDATE main.invoices SET
                document_type = coalesce(document_type, CASE WHEN total_amount < 0 THEN 'credit_memo' ELSE 'invoice' END),
                status_category = coalesce(status_category, {status_category_sql()}),
                freight_amount = coalesce(freight_amount, 0)
            WHERE document_type IS NULL OR status_category IS NULL OR freight_amount IS NULL"""
        )
        con.execute("UPDATE main.invoices SET is_void = (status_category = 'void') "
                    "WHERE is_void IS DISTINCT FROM (status_category = 'void')")
    return n


def upgrade_history(con: duckdb.DuckDBPyConnection) -> int:
    """Fill document_type, status_category and freight_amount on versions an earlier release recorded,
    and bring their amounts to the signs and tax of the upgraded main.invoices (upgrade_conformed), so the
    upgrade itself adds no version. Returns the versions filled.

    document_type and freight come from the invoice's current row; status_category from the version's
    own status and balance; the credits' versions of a source whose mapping declares
    CREDITS_STORED_POSITIVE_BEFORE_UPGRADE are negated (the release before stored them as the source sends them,
    positive); the version of the current source version takes the current net
    and tax (e.g. a CRM.COM tax now read from the item's own tax_amount). The hash is recomputed.
    """
    con.execute("""CREATE OR REPLACE TEMP TABLE _history_upgrade AS SELECT source_name, invoice_id, valid_from
                   FROM main.invoice_history WHERE document_type IS NULL""")
    n = con.execute("SELECT count(*) FROM _history_upgrade").fetchone()[0]
    if n:
        # Types whose mapping declares CREDITS_STORED_POSITIVE_BEFORE_UPGRADE: a one-off migration fact
        # (the release before signed credits stored their credits' amounts positive, as the API sends them).
        positive = [t for t, v in _declared("CREDITS_STORED_POSITIVE_BEFORE_UPGRADE").items() if v]
        credit = f"{_types_where('i.source_type', positive)} AND i.document_type = 'credit_memo'"
        same = "h.last_modified_at IS NOT DISTINCT FROM i.last_modified_at"  # the current source version
        con.execute(
            f"""UPDATE main.invoice_history AS h SET
                document_type = i.document_type,
                status_category = {status_category_sql('i.source_type', 'h.status', 'CASE WHEN ' + credit + ' THEN -h.balance_due ELSE h.balance_due END', 'h.is_void')},
                freight_amount = i.freight_amount,
                net_amount = CASE WHEN {same} THEN i.net_amount WHEN {credit} THEN -h.net_amount ELSE h.net_amount END,
                tax_amount = CASE WHEN {same} THEN i.tax_amount WHEN {credit} THEN -h.tax_amount ELSE h.tax_amount END,
                total_amount = CASE WHEN {credit} THEN -h.total_amount ELSE h.total_amount END,
                balance_due = CASE WHEN {credit} THEN -h.balance_due ELSE h.balance_due END
            FROM main.invoices AS i
            WHERE h.document_type IS NULL AND i.source_name = h.source_name AND i.invoice_id = h.invoice_id"""
        )
        # Versions of invoices no longer in main.invoices: what their own columns say.
        con.execute(
            """UPDATE main.invoice_history SET document_type = CASE WHEN total_amount < 0 THEN 'credit_memo' ELSE 'invoice' END,
                status_category = CASE WHEN coalesce(is_void, false) THEN 'void' WHEN balance_due = 0 THEN 'paid' ELSE 'open' END,
                freight_amount = 0
            WHERE document_type IS NULL"""
        )
        scope = """FROM _history_upgrade AS u WHERE u.source_name = h.source_name AND u.invoice_id = h.invoice_id
                   AND u.valid_from = h.valid_from"""
        con.execute(f"UPDATE main.invoice_history AS h SET is_void = (h.status_category = 'void') {scope}")
        con.execute(f"UPDATE main.invoice_history AS h SET version_hash = {version_hash_sql('h')} {scope}")
    con.execute("DROP TABLE _history_upgrade")
    return n
