"""The core model (model.py): one column list per table gives both its DDL and its Arrow schema, and
the warehouse's tables are exactly those lists; conformed rows with an unknown key fail loudly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from invoice_pipeline import conformed, model
from invoice_pipeline.batch import LoadBatch, prepare_batch
from invoice_pipeline.money import MONEY, QUANTITY, RATE
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.sources import base
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app
from .fake_source import FakeSource, fake_config_block, invoice


def _duckdb_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
        "ORDER BY column_index", [schema, table]).fetchall()


def _declared(columns: tuple[model.Column, ...]) -> list[tuple[str, str]]:
    """(name, type) as DuckDB reports a column of that declared type."""
    spelled = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
    return [(c.name, spelled.get(c.sql_type, c.sql_type)) for c in columns]


def test_ddl_and_arrow_schema_come_from_one_list_and_agree() -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, table in model.CONFORMED.items():
        con.execute(f"CREATE TABLE {name} ({table.ddl})")
        assert _duckdb_columns(con, "main", name) == _declared(table.columns)
        # What DuckDB hands back of the DDL's table is exactly the Arrow schema batches are built with.
        assert con.execute(f"SELECT * FROM {name}").to_arrow_table().schema == table.schema
    for columns, schema in ((model.RAW_COLUMNS, model.RAW_SCHEMA), (model.QUARANTINE_COLUMNS, model.QUARANTINE_SCHEMA),
                            (model.KEYS_COLUMNS, model.KEYS_SCHEMA)):
        assert schema.names == [c.name for c in columns]
        assert schema.types == [model.arrow_type(c.sql_type) for c in columns]
    assert conformed.CONFORMED_TABLES["invoices"]["total_amount"][0] == model.MONEY_T
    with pytest.raises(ValueError, match="no Arrow type"):
        model.arrow_type("HUGEINT")


def test_money_kinds_follow_the_one_type_definition() -> None:
    for scale, sql_type in ((MONEY, model.MONEY_T), (QUANTITY, model.QTY_T), (RATE, model.RATE_T)):
        arrow = model.arrow_type(sql_type)
        assert scale.places == Decimal(1).scaleb(-arrow.scale)
        assert scale.limit == Decimal(10) ** (arrow.precision - arrow.scale)


def test_the_warehouse_creates_exactly_the_declared_tables(tmp_path: Path) -> None:
    """The warehouse's DDL of the conformed, raw, quarantine and flattened tables is the model's."""
    app = make_app(tmp_path, {"fake": fake_config_block()})
    run_source(app, "fake", source=FakeSource("fake", app.sources["fake"], [invoice(1)]))
    with Warehouse(app.warehouse).writer() as con:
        for name, table in model.CONFORMED.items():
            assert _duckdb_columns(con, "main", name) == _declared(table.columns), name
        assert _duckdb_columns(con, "fake", "_raw_invoices") == _declared(model.RAW_COLUMNS)
        assert _duckdb_columns(con, "fake", "_quarantine") == _declared(model.QUARANTINE_COLUMNS)
        root = _duckdb_columns(con, "fake", "invoices")
        assert root[:len(model.ROOT_META_COLUMNS)] == _declared(model.ROOT_META_COLUMNS)
        child = _duckdb_columns(con, "fake", "invoices__lines")
        assert child[:len(model.CHILD_META_COLUMNS)] == _declared(model.CHILD_META_COLUMNS)


def test_core_types_are_one_definition_reexported_by_the_source_base() -> None:
    assert (base.Window, base.SourceRecord, base.ConformedInvoice) == (
        model.Window, model.SourceRecord, model.ConformedInvoice)


def test_to_arrow_rejects_an_unknown_key_naming_table_and_key() -> None:
    with pytest.raises(model.UnknownColumnError, match=r"invoice_lines has no column 'unit_prise'"):
        conformed.to_arrow("invoice_lines", [{"line_id": "1", "unit_prise": 5}])
    # the known keys still convert, missing ones are null
    table = conformed.to_arrow("invoice_lines", [{"line_id": "1", "unit_price": Decimal("5")}])
    assert table.column("unit_price").to_pylist() == [Decimal("5.000000")]
    assert table.column("quantity").to_pylist() == [None]


def test_finalize_rejects_an_unknown_key_in_any_row() -> None:
    def mapped() -> model.ConformedInvoice:
        return model.ConformedInvoice({"invoice_id": "1", "total_amount": Decimal(1), "balance_due": Decimal(0)},
                                      [{"line_id": "1", "line_amount": Decimal(1)}])

    conformed.finalize(mapped(), derive_installment=True)  # the good one passes
    bad_header = mapped()
    bad_header.invoice["totl_amount"] = Decimal(1)
    with pytest.raises(model.UnknownColumnError, match=r"conformed table invoices has no column 'totl_amount'"):
        conformed.finalize(bad_header, derive_installment=True)
    bad_tax = mapped()
    bad_tax.tax_lines.append({"tax_line_id": "t", "tax_amount": Decimal(1), "rate": 19})
    with pytest.raises(model.UnknownColumnError, match=r"invoice_tax_lines has no column 'rate'"):
        conformed.finalize(bad_tax, derive_installment=True)


class _MisspellingSource(FakeSource):
    """A mapping with a bug for invoice 2: a line key misspelt."""

    def to_conformed(self, payload):  # noqa: ANN001, ANN201 - as the base
        out = super().to_conformed(payload)
        if payload["id"] == "2":
            out.lines[0]["unit_prise"] = out.lines[0].pop("line_amount")
        return out


def test_a_row_with_an_unknown_key_quarantines_its_record_not_the_run(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"fake": fake_config_block()})
    summary = run_source(app, "fake", source=_MisspellingSource("fake", app.sources["fake"], [invoice(1), invoice(2)]))
    assert (summary.invoices_loaded, summary.quarantined) == (1, 1)
    with Warehouse(app.warehouse).writer() as con:
        reason = con.execute("SELECT reason FROM fake._quarantine WHERE invoice_id = '2'").fetchone()[0]
        assert "invoice_lines has no column 'unit_prise'" in reason
        assert con.execute("SELECT invoice_id FROM main.invoices").fetchall() == [("1",)]


def test_prepared_batch_tables_have_the_model_schemas() -> None:
    app = make_app(Path("/nonexistent"), {"fake": fake_config_block()})
    source = FakeSource("fake", app.sources["fake"], [])
    records = [source.identify(invoice(1)), source.identify({"id": "9", "updated": "2025-01-01T00:00:00Z"})]
    batch, _ = prepare_batch(source, records, "r1", datetime(2025, 2, 1, tzinfo=UTC))
    assert isinstance(batch, LoadBatch)
    assert batch.raw.schema == model.RAW_SCHEMA and batch.quarantine.schema == model.QUARANTINE_SCHEMA
    assert batch.keys.schema == model.KEYS_SCHEMA
    for name, table in batch.conformed.items():
        assert table.schema == model.CONFORMED[name].schema
    root = batch.flat["invoices"].schema
    for column in model.ROOT_META_COLUMNS:
        assert root.field(column.name).type == model.arrow_type(column.sql_type)
    assert batch.flat["invoices__lines"].schema.field("_position").type == pa.int32()
