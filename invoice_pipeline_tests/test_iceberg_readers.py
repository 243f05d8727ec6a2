"""Readers of the published Iceberg tables: pyiceberg -> Arrow, polars and DuckDB, all seeing `main`
(the audited snapshot) with exact decimals, and none seeing what the writers added since."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl

from .iceberg_support import iceberg_app, ingest

from invoice_pipeline.pipeline import run_source  # noqa: E402


def test_published_tables_read_with_pyiceberg_polars_and_duckdb(tmp_path: Path) -> None:
    from invoice_pipeline.iceberg.catalog import open_catalog
    from invoice_pipeline.iceberg.publish import publish
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=40) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        assert publish(app).published
        expected_total = sum(ingest(app, "main", "invoices").column("total_amount").to_pylist())
        time.sleep(1.1)
        sim.mutate(new=5)
        run_source(app, "agv")  # written, not yet audited: no reader may see these five
    assert ingest(app, "main", "invoices").num_rows == 45

    table = open_catalog(app.warehouse.iceberg).load_table(("main", "invoices"))
    arrow = table.scan().to_arrow()  # pyiceberg -> Arrow reads main
    assert arrow.num_rows == 40 and str(arrow.schema.field("total_amount").type).startswith("decimal128")
    assert sum(arrow.column("total_amount").to_pylist()) == expected_total

    frame = pl.scan_iceberg(table).select(pl.len(), pl.col("total_amount").sum()).collect()
    assert frame.item(0, 0) == 40 and Decimal(str(frame.item(0, 1))) == expected_total
    assert pl.scan_iceberg(table).collect_schema()["total_amount"] == pl.Decimal(arrow.schema.field("total_amount").type.precision,
                                                                                 arrow.schema.field("total_amount").type.scale)

    con = duckdb.connect()
    con.register("invoices", arrow)
    lines = open_catalog(app.warehouse.iceberg).load_table(("main", "invoice_lines")).scan().to_arrow()
    con.register("invoice_lines", lines)
    count, total = con.execute("SELECT count(*), sum(total_amount) FROM invoices").fetchone()
    assert (count, total) == (40, expected_total)
    orphans = con.execute("SELECT count(*) FROM invoice_lines l ANTI JOIN invoices i USING (source_name, invoice_id)").fetchone()
    assert orphans == (0,)  # the published lines belong to the published invoices, not to the five unaudited ones
    con.close()

    assert publish(app).published
    assert table.refresh().scan().to_arrow().num_rows == 45  # published now
    flat_root = open_catalog(app.warehouse.iceberg).load_table(("agv", "invoices")).scan().to_arrow()
    assert flat_root.num_rows == 45  # the source's flattened tables are published with the rest
