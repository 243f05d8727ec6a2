"""Oracle OCC through the pipeline: a listing cut short fails the real CLI without moving the
cursor; list-only mode (q ignored) compares list fields with the warehouse's stored versions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import yaml

from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import PageTamper
from invoice_pipeline.sources.oracle_occ.simulator import LIST_PATH, SIMULATOR_CLASS
from invoice_pipeline_tests.conftest import make_app


def _cli_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def _state(db: Path) -> tuple[int, object]:
    with duckdb.connect(str(db), read_only=True) as con:
        loaded = con.execute("SELECT count(*) FROM main.invoices WHERE source_name = 'occ'").fetchone()[0]
        cursor = con.execute("SELECT max(cursor_at) FROM main._pipeline_cursors WHERE source_name = 'occ'").fetchone()[0]
    return loaded, cursor


def test_an_empty_page_mid_listing_fails_the_cli_run_and_leaves_the_cursor(tmp_path: Path) -> None:
    # Before: the run "succeeded" with 50 of 200 invoices and moved the cursor past the rest for good.
    sim = SIMULATOR_CLASS(size=200, page_tamper=PageTamper("empty", page=2))
    db = tmp_path / "data" / "warehouse.duckdb"
    config = {
        "warehouse": {"duckdb_path": str(db), "published_path": str(tmp_path / "data" / "pub" / "w.duckdb"),
                      "parquet_dir": str(tmp_path / "data" / "parquet")},
        "sources": {"occ": sim.source_config()},
    }
    with sim:
        failed = _cli_run(tmp_path, config)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0, output
        assert "ended early at offset 50" in output and "hasMore: true" in output, output
        assert "Traceback" not in output and sim.password not in output
        loaded, cursor = _state(db)
        assert cursor is None and loaded < 200
        sim.page_tamper = None  # the API answers consistently again: the next run loads everything
        ok = _cli_run(tmp_path, config)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        loaded, cursor = _state(db)
        assert loaded == 200 and cursor is not None


def test_list_only_mode_in_the_pipeline_reads_details_only_of_changed_invoices(tmp_path: Path) -> None:
    with SIMULATOR_CLASS(size=120, q_mode="ignore") as sim:
        app = make_app(tmp_path, {"occ": sim.source_config()})
        first = run_source(app, "occ")
        assert first.invoices_loaded == 120 and first.extra["list_mode"] == "list-only (q ignored)"
        assert first.extra["ids_new"] == 120
        touched = sim.mutate(updates=2, new=1, payments=1, seed=3)
        sim.requests.clear()
        second = run_source(app, "occ")
        details = sum(n for p, n in sim.requests.items() if p.startswith(LIST_PATH + "/"))
        assert second.extra["ids_new"] == 1 and second.extra["ids_changed"] == 3
        assert second.extra["ids_unchanged"] == 117 and details == 4
        # The payment kept its LastUpdateDate (before this window): left to the re-poll, not written here.
        assert second.invoices_loaded == 3 and second.extra["outside_window"] == 1
        assert set(touched["payments"]).isdisjoint(touched["updated"] + touched["new"])
