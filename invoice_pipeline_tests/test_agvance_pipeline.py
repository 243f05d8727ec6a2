"""Agvance through the whole pipeline: hostile tenant column names load, incremental runs add up."""

from __future__ import annotations

from invoice_pipeline.config import parse_config
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.agvance.simulator import LONG_COLUMN, SIMULATOR_CLASS, TENANT_COLUMNS
from invoice_pipeline.warehouse import Warehouse


def conformed_totals(con) -> dict:
    n, total, net, tax = con.execute(
        "select count(*), sum(total_amount), sum(net_amount), sum(tax_amount) from main.invoices where source_name='agv'"
    ).fetchone()
    lines = con.execute("select count(*) from main.invoice_lines where source_name='agv'").fetchone()[0]
    taxes = con.execute("select count(*) from main.invoice_tax_lines where source_name='agv'").fetchone()[0]
    return {"invoices": n, "lines": lines, "tax_lines": taxes, "total_amount": total, "line_amount": net,
            "tax_amount": tax}


def test_two_runs_exact_and_hostile_columns(tmp_path):
    with SIMULATOR_CLASS(size=300, knobs=Knobs(retry_after=0), max_results=40) as sim:
        app = parse_config({
            "warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "p.duckdb"),
                          "parquet_dir": str(tmp_path / "parquet")},
            "sources": {"agv": {**sim.source_config(), "window_size": "45d"}},
        })
        first = run_source(app, "agv")
        assert first.status == "success" and first.invoices_loaded == 300 and first.quarantined == 0
        touched = sim.mutate(updates=4, new=2, voids=2, delete_lines=2)
        second = run_source(app, "agv")
        assert second.invoices_loaded == sum(len(v) for v in touched.values())
        want = sim.expected()
        with Warehouse(app.warehouse).reader() as con:
            assert conformed_totals(con) == want
            void = con.execute("select count(*) from main.invoices where source_name='agv' and status='Void'").fetchone()
            assert void[0] >= 2
            seen: set[str] = set()
            for table, names in TENANT_COLUMNS.items():
                cols = [r[0] for r in con.execute(
                    "select column_name from information_schema.columns where table_schema='agv' and table_name=?",
                    [f"invoices__{table}"]).fetchall()]
                data_cols = [c for c in cols if not c.startswith("_")]
                # Every source column got its own column, names differing only by case included.
                assert len(data_cols) == len(names), (table, data_cols)
                seen |= set(data_cols)
            books = [r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_schema='agv' "
                "and table_name='invoices__InvoiceBooksDetails' and lower(column_name) like 'rate%'").fetchall()]
            assert len(books) == 2
            texts = {c: {r[0] for r in con.execute(f'select "{c}" from agv."invoices__InvoiceBooksDetails"').fetchall()}
                     for c in books}
            assert sorted(texts.values(), key=len)[0] == {"per TON"}  # 'rate' kept apart from 'Rate'
    assert {"Größe", "Température °F", 'Booked "Price"', "Analysis;N-P-K", "Driver's Name"} <= seen
    assert any(c.startswith(LONG_COLUMN[:60]) for c in seen)
