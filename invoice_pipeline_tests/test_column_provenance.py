"""Each source's mapping declares where every conformed column comes from (COLUMN_SOURCES), and the
warehouse's column comments are built from those declarations plus the column's description."""

from __future__ import annotations

import duckdb
import pytest

from invoice_pipeline import conformed, conformed_docs
from invoice_pipeline.config import WarehouseConfig
from invoice_pipeline.source_types import SOURCE_PACKAGES
from invoice_pipeline.warehouse import Warehouse


def _comments(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], str]:
    return {(t, c): text for t, c, text in con.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE schema_name = 'main'").fetchall()}


def test_every_registered_source_declares_every_conformed_column() -> None:
    declared = conformed_docs.provenance()
    assert set(declared) == set(SOURCE_PACKAGES)  # no registered source is left out
    for type_name, columns in declared.items():
        assert conformed.provenance_problems(type_name, columns) == [], type_name
        for table in conformed.CONFORMED:
            # an entry for every column the source maps: a field, a rule, or the explicit marker
            assert set(columns[table]) == set(conformed.source_columns(table)), (type_name, table)
    # the marker is used where a source has no such field
    assert declared["crmcom"]["invoices"]["payment_terms"] == conformed.NOT_PROVIDED
    assert declared["crmcom"]["invoice_installments"] == conformed.NO_INSTALLMENTS


def test_an_incomplete_or_wrong_declaration_is_refused_naming_source_and_column() -> None:
    good = conformed_docs.source_provenance("agvance")
    assert good is not None
    missing = {t: dict(cols) for t, cols in good.items()}
    del missing["invoices"]["due_date"]
    missing["invoice_lines"]["unit_prise"] = "UnitPrice"
    missing["invoices"]["net_amount"] = "sum of Extension"  # set by the pipeline, not by a source
    with pytest.raises(ValueError) as err:
        conformed.documented_tables({"agvance": missing})
    text = str(err.value)
    assert "agvance: invoices.due_date: no provenance" in text
    assert "agvance: invoice_lines.unit_prise: no such column" in text
    assert "agvance: invoices.net_amount: set by the pipeline" in text


def test_column_comments_in_duckdb_show_each_sources_provenance() -> None:
    con = duckdb.connect()
    Warehouse(WarehouseConfig()).ensure_main(con)
    for statement in conformed_docs.comment_statements():
        con.execute(statement)
    comments = _comments(con)
    number = comments[("invoices", "invoice_number")]
    assert number.startswith(conformed.CONFORMED_TABLES["invoices"]["invoice_number"][1])  # the description first
    for part in ("oracle_occ: TransactionNumber", "crmcom: number (null for DRAFT)",
                 "softwareone: erpData.documentNo", "agvance: InvoiceNumber"):
        assert part in number
    assert "crmcom: not provided" in comments[("invoices", "payment_terms")]
    assert "agvance: InvoiceRecordLineItemDetails.Extension" in comments[("invoice_lines", "line_amount")]
    # a column the pipeline sets names no source
    assert "Per source" not in comments[("invoices", "net_amount")]
    # every conformed column has a comment, and every source-mapped one names every registered source
    for table, columns in conformed.CONFORMED_TABLES.items():
        for column in columns:
            assert comments[(table, column)], (table, column)
            if column in conformed.source_columns(table):
                assert all(f"{t}: " in comments[(table, column)] for t in SOURCE_PACKAGES), (table, column)


def test_the_warehouse_applies_the_provenance_comments() -> None:
    con = duckdb.connect()
    Warehouse(WarehouseConfig()).ensure_main(con)
    assert "oracle_occ: TransactionNumber" in (_comments(con)[("invoices", "invoice_number")] or "")
