"""SoftwareOne through the real CLI: a page short of its own total fails the run, cursor unmoved."""

from __future__ import annotations

from pathlib import Path

from invoice_pipeline.simulation import PageTamper
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS
from invoice_pipeline_tests.test_oracle_occ_pipeline import _cli_run, _state


def test_a_short_page_fails_the_cli_run_and_leaves_the_cursor(tmp_path: Path) -> None:
    # Before: 210 of 300 invoices loaded (a page with 10 of its 100), the run succeeded, the cursor moved.
    sim = SIMULATOR_CLASS(size=300, page_tamper=PageTamper("short", page=1, keep=10))
    db = tmp_path / "data" / "warehouse.duckdb"
    config = {
        "warehouse": {"duckdb_path": str(db), "published_path": str(tmp_path / "data" / "pub" / "w.duckdb"),
                      "parquet_dir": str(tmp_path / "data" / "parquet")},
        "sources": {"occ": sim.source_config()},  # the name _state() reads
    }
    with sim:
        failed = _cli_run(tmp_path, config)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output
    assert "ended early at offset 100: the page holds 10 invoices" in output, output
    assert "Traceback" not in output and sim.token not in output
    loaded, cursor = _state(db)
    assert cursor is None and loaded < 300
