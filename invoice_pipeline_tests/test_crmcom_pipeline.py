"""CRM.COM through the whole pipeline: nested JSON flattened, two runs add up exactly."""

from __future__ import annotations

from invoice_pipeline.config import parse_config
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.crmcom.simulator import SIMULATOR_CLASS
from invoice_pipeline.warehouse import Warehouse


def conformed_totals(con) -> dict:
    n, total, net, tax = con.execute(
        "select count(*), sum(total_amount), sum(net_amount), sum(tax_amount) from main.invoices where source_name='crm'"
    ).fetchone()
    lines = con.execute("select count(*) from main.invoice_lines where source_name='crm'").fetchone()[0]
    taxes = con.execute("select count(*) from main.invoice_tax_lines where source_name='crm'").fetchone()[0]
    return {"invoices": n, "lines": lines, "tax_lines": taxes, "total_amount": total, "line_amount": net,
            "tax_amount": tax}


def test_two_runs_exact(tmp_path) -> None:
    with SIMULATOR_CLASS(size=250, knobs=Knobs(retry_after=0)) as sim:
        app = parse_config({
            "warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "p.duckdb"),
                          "parquet_dir": str(tmp_path / "parquet")},
            "sources": {"crm": {**sim.source_config(), "page_size": 20}},
        })
        first = run_source(app, "crm")
        assert first.status == "success" and first.invoices_loaded == 250 and first.quarantined == 0
        touched = sim.mutate(updates=4, new=2, voids=2, delete_lines=2)
        second = run_source(app, "crm")
        assert second.invoices_loaded == sum(len(v) for v in touched.values())
        with Warehouse(app.warehouse).reader() as con:
            assert conformed_totals(con) == sim.expected()
            tables = {r[0] for r in con.execute(
                "select table_name from information_schema.tables where table_schema='crm'").fetchall()}
            cols = {r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_schema='crm' and table_name='invoices'"
            ).fetchall()}
            drafts = con.execute(
                "select count(*) from main.invoices where source_name='crm' and status='DRAFT' and invoice_number is null"
            ).fetchone()[0]
        assert drafts > 0
        assert any("invoice_item_set" in t and "applied_tax_rates" in t for t in tables), tables
        assert {"log_information__updated_date", "accounts_receivable__account_owner__name"} <= cols
        assert not sim.tokens  # every token released
