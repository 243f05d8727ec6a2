"""`invoice-pipeline status` after a real `invoice-pipeline run` against a simulator, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import yaml
from filelock import FileLock

from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

from .conftest import cli_in as _cli

SIZE = 30




@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("status")
    with SIMULATOR_CLASS(size=SIZE) as sim:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({
            "warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"),
                          "published_path": str(tmp_path / "p" / "w.duckdb"),
                          "parquet_dir": str(tmp_path / "parquet")},
            "sources": {"agv": sim.source_config()}}))
        before = _cli(tmp_path, "status", "--json")
        assert before.returncode == 0, before.stderr
        assert json.loads(before.stdout)["sources"][0]["cursor_at"] is None
        run = _cli(tmp_path, "run")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return tmp_path


def test_status_reports_cursor_last_run_publish_and_checks(loaded: Path) -> None:
    proc = _cli(loaded, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["read_from"] == "working warehouse"
    assert doc["last_publish_id"]
    (agv,) = doc["sources"]
    assert agv["source"] == "agv" and agv["source_type"] == "agvance"
    assert agv["cursor_at"] is not None
    run = agv["last_run"]
    assert run["status"] == "success" and run["invoices_loaded"] > 0
    assert run["invoices_extracted"] >= run["invoices_loaded"]
    assert agv["quarantined"] == 0
    assert agv["blocking_failing"] == []
    text = _cli(loaded, "status")
    assert text.returncode == 0
    assert "agv (agvance)" in text.stdout and "last run:     success" in text.stdout, text.stdout


def test_status_shows_a_failing_blocking_check_and_exits_1(loaded: Path) -> None:
    with duckdb.connect(str(loaded / "w.duckdb")) as con:
        invoice = con.execute("SELECT invoice_id FROM main.invoices WHERE total_amount > 0 ORDER BY 1 LIMIT 1").fetchone()[0]
        con.execute("UPDATE main.invoices SET balance_due = total_amount + 5 WHERE invoice_id = ?", [invoice])
        con.execute("INSERT INTO agv._quarantine VALUES ('X1', 'test: unmappable', '{}', 'r', now())")
    try:
        proc = _cli(loaded, "status", "--json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (agv,) = json.loads(proc.stdout)["sources"]
        assert agv["failing_checks"]["balance_not_above_total"] == 1
        assert "balance_not_above_total" in agv["blocking_failing"]
        assert agv["quarantined"] == 1
    finally:
        with duckdb.connect(str(loaded / "w.duckdb")) as con:
            con.execute("UPDATE main.invoices SET balance_due = total_amount WHERE balance_due > total_amount")
            con.execute("DELETE FROM agv._quarantine WHERE invoice_id = 'X1'")


def test_status_reads_the_published_snapshot_while_a_run_holds_the_lock(loaded: Path) -> None:
    with FileLock(str(loaded / "w.duckdb.lock")):  # as a running pipeline's writer turn holds it
        proc = _cli(loaded, "status", "--json", "--wait", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["read_from"].startswith("published snapshot")
    assert doc["last_publish_id"]
    (agv,) = doc["sources"]
    assert agv["cursor_at"] is not None and agv["last_run"] is None and agv["quarantined"] is None


def test_a_failed_last_run_shows_its_error_and_exits_1(loaded: Path) -> None:
    """Last in this file: it leaves a failed run behind in the shared warehouse."""
    doc = yaml.safe_load((loaded / "c.yaml").read_text())
    doc["sources"]["agv"].update(base_url="http://127.0.0.1:9", max_retries=0, timeout="2s")  # the API is down
    (loaded / "c.yaml").write_text(yaml.safe_dump(doc))
    failed = _cli(loaded, "run")
    assert failed.returncode == 1
    proc = _cli(loaded, "status", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (agv,) = json.loads(proc.stdout)["sources"]
    assert agv["last_run"]["status"] == "failed" and "127.0.0.1:9" in agv["last_run"]["error"]
    assert agv["last_success_at"] is not None and agv["cursor_at"] is not None  # the cursor stayed
    text = _cli(loaded, "status").stdout
    assert "last run:     failed" in text and "error:" in text and "last success:" in text, text
