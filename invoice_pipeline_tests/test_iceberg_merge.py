"""Iceberg backend on one machine (SQLite catalog, local folder): the DuckDB backend's merge guarantees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from .iceberg_support import duplicates, iceberg_app, ingest, published

from invoice_pipeline.pipeline import run_source  # noqa: E402

KEYS = {"invoices": ["source_name", "invoice_id"], "invoice_lines": ["source_name", "invoice_id", "line_id"],
        "invoice_tax_lines": ["source_name", "invoice_id", "tax_line_id"],
        "invoice_installments": ["source_name", "invoice_id", "installment_id"]}


def _no_duplicates(app) -> None:
    for table, keys in KEYS.items():
        assert duplicates(ingest(app, "main", table), keys) == 0, table


def test_config_requires_the_iceberg_block_and_keeps_the_uri_secret() -> None:
    from pydantic import ValidationError

    from invoice_pipeline.config import WarehouseConfig

    with pytest.raises(ValidationError, match="backend 'iceberg' needs an 'iceberg' block"):
        WarehouseConfig(backend="iceberg")
    config = WarehouseConfig(backend="iceberg", iceberg={"catalog_uri": "postgresql+psycopg2://u:hunter2@db/x",
                                                         "warehouse": "s3://bucket/wh"})
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())
    assert WarehouseConfig().backend == "duckdb"  # nothing changes for a user who does not opt in


def test_runs_merge_newer_keep_newer_replace_children_as_a_set_and_never_duplicate(tmp_path: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=60) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": {**sim.source_config(), "batch_size": 25}})
        first = run_source(app, "agv")
        assert first.status == "success" and first.invoices_loaded == 60
        invoices = ingest(app, "main", "invoices")
        assert invoices.num_rows == 60
        lines_before = ingest(app, "main", "invoice_lines")
        cursor1 = ingest(app, "main", "_pipeline_cursors").column("cursor_at").to_pylist()
        assert len(cursor1) == 1
        assert published(app, "main", "invoices").num_rows == 0  # nothing published before the audit

        again = run_source(app, "agv")  # incremental, nothing new
        _no_duplicates(app)
        assert ingest(app, "main", "invoices").num_rows == 60
        assert ingest(app, "agv", "_raw_invoices").num_rows == 60  # a payload version is kept once
        assert again.status == "success"

        time.sleep(1.1)  # a new version is at least a second newer
        touched = sim.mutate(updates=5, delete_lines=3)
        run_source(app, "agv")
        _no_duplicates(app)
        invoices = ingest(app, "main", "invoices")
        assert invoices.num_rows == 60
        lines = ingest(app, "main", "invoice_lines")
        for inv in touched["lines_deleted"]:  # children replaced as a set: the deleted line is gone
            before = pc_count(lines_before, inv)
            assert pc_count(lines, inv) < before, inv
        assert ingest(app, "agv", "_raw_invoices").num_rows == 60 + len(set(touched["updated"]) | set(touched["lines_deleted"]) | set(touched["voided"]))
        cursors = ingest(app, "main", "_pipeline_cursors").to_pylist()
        assert len(cursors) == 1 and cursors[0]["cursor_at"] > cursor1[0]
        runs = ingest(app, "main", "_pipeline_runs").to_pylist()
        assert [r["status"] for r in runs] == ["success"] * 3


def pc_count(rows: pa.Table, invoice_id: str) -> int:
    return sum(1 for i in rows.column("invoice_id").to_pylist() if i == invoice_id)


def test_older_version_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    """A backfill of an older window (or a late writer) carrying an old version is skipped, per key."""
    from invoice_pipeline.iceberg.catalog import ensure_main, open_catalog
    from invoice_pipeline.iceberg.merge import merge_versioned
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=10) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
    table = ensure_main(open_catalog(app.warehouse.iceberg))["invoices"]
    stored = ingest(app, "main", "invoices").sort_by("invoice_id")
    older = stored.slice(0, 2).set_column(stored.schema.get_field_index("customer_name"), "customer_name",
                                          pa.array(["OLD", "OLD"]))
    newer = stored.slice(2, 1).set_column(stored.schema.get_field_index("customer_name"), "customer_name",
                                          pa.array(["NEW"]))
    versions = older.column("last_modified_at").to_pylist()
    older_keys = pa.table({"invoice_id": older.column("invoice_id"),
                           "last_modified_at": pa.array([v - timedelta(days=1) for v in versions], older.schema.field("last_modified_at").type)})
    newer_keys = pa.table({"invoice_id": newer.column("invoice_id"),
                           "last_modified_at": pa.array([newer.column("last_modified_at")[0].as_py() + timedelta(seconds=5)],
                                                        newer.schema.field("last_modified_at").type)})
    older = older.set_column(older.schema.get_field_index("last_modified_at"), "last_modified_at", older_keys.column(1))
    newer = newer.set_column(newer.schema.get_field_index("last_modified_at"), "last_modified_at", newer_keys.column(1))
    assert merge_versioned(table, older, older_keys, source="agv", key="invoice_id", version="last_modified_at",
                           retries=3) == (0, 2)
    assert merge_versioned(table, newer, newer_keys, source="agv", key="invoice_id", version="last_modified_at",
                           retries=3) == (1, 0)
    after = {r["invoice_id"]: r["customer_name"] for r in ingest(app, "main", "invoices").to_pylist()}
    assert len(after) == 10
    assert [after[i] for i in older.column("invoice_id").to_pylist()] != ["OLD", "OLD"]
    assert "OLD" not in after.values() and after[newer.column("invoice_id")[0].as_py()] == "NEW"


@pytest.mark.parametrize("point", ["iceberg_flat_written", "iceberg_children_written", "iceberg_invoices_written"])
def test_killed_run_leaves_the_cursor_blocks_publish_and_a_rerun_heals(tmp_path: Path, point: str) -> None:
    """Killed after the flattened tables (or also the conformed children) committed and before the
    invoices, or after the invoices and before their history: cursor unmoved, the audit refuses the half-written batch, the re-run replaces it and
    publish goes through."""
    from invoice_pipeline.iceberg.publish import publish
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        assert publish(app).published
        cursor = ingest(app, "main", "_pipeline_cursors").column("cursor_at").to_pylist()
        time.sleep(1.1)
        sim.mutate(updates=4)
        pid_file = tmp_path / "pid"
        env = {**os.environ, "INVOICE_PIPELINE_PAUSE_AT": point,
               "INVOICE_PIPELINE_PAUSE_FILE": str(pid_file)}
        proc = subprocess.Popen([sys.executable, "-m", "invoice_pipeline.iceberg_cli", "load", "--config", str(config)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 90
            while not pid_file.exists():
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert ingest(app, "main", "_pipeline_cursors").column("cursor_at").to_pylist() == cursor
        refused = publish(app)
        expected = "history_matches_invoices" if point == "iceberg_invoices_written" else "children_match_invoice_version"
        assert not refused.published and expected in refused.failures
        before = published(app, "main", "invoices")
        run_source(app, "agv")
        _no_duplicates(app)
        result = publish(app)
        assert result.published, result.failures
        after = published(app, "main", "invoices")
        assert after.num_rows == before.num_rows == 30
        assert ingest(app, "main", "_pipeline_cursors").column("cursor_at").to_pylist() > cursor


def test_oracle_list_only_reads_details_only_of_changed_invoices_against_iceberg(tmp_path: Path) -> None:
    """stored_fields for Iceberg: the Oracle client compares listed fields with the stored version and
    fetches details of changed invoices only (the DuckDB backend's test_oracle_occ_pipeline.py twin)."""
    from invoice_pipeline.sources.oracle_occ.simulator import LIST_PATH, SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=60, q_mode="ignore") as sim:
        app, _ = iceberg_app(tmp_path, {"occ": sim.source_config()})
        first = run_source(app, "occ")
        assert first.invoices_loaded == 60 and first.extra["ids_new"] == 60
        sim.mutate(updates=2, new=1, payments=1, seed=3)
        sim.requests.clear()
        second = run_source(app, "occ")
        details = sum(n for p, n in sim.requests.items() if p.startswith(LIST_PATH + "/"))
        assert second.extra["ids_new"] == 1 and second.extra["ids_changed"] == 3
        assert second.extra["ids_unchanged"] == 57 and details == 4
        assert second.invoices_loaded == 4
    _no_duplicates(app)
    assert ingest(app, "main", "invoices").num_rows == 61


def test_flattened_tables_follow_the_payloads_and_replace_children_as_a_set(tmp_path: Path) -> None:
    """Each source's flattened tables are Iceberg tables too: the root one row per invoice, child rows
    of a changed invoice replaced as a set (a deleted line's flattened row is gone)."""
    from invoice_pipeline.iceberg.catalog import open_catalog
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=20) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()})
        run_source(app, "agv")
        catalog = open_catalog(app.warehouse.iceberg)
        names = {i[-1] for i in catalog.list_tables("agv")}
        children = sorted(names - {"invoices", "_raw_invoices", "_quarantine"})
        assert "invoices" in names and children, names
        root = ingest(app, "agv", "invoices")
        assert root.num_rows == 20 and duplicates(root, ["_invoice_id"]) == 0
        assert any(c not in ("_invoice_id", "_last_modified_at", "_loaded_at", "_run_id") for c in root.column_names)
        before = {c: ingest(app, "agv", c) for c in children}
        time.sleep(1.1)
        touched = sim.mutate(delete_lines=2)
        run_source(app, "agv")
        assert ingest(app, "agv", "invoices").num_rows == 20
        shrunk = False
        for c in children:
            after = ingest(app, "agv", c)
            assert duplicates(after, ["_invoice_id", "_row_id"]) == 0, c
            for inv in touched["lines_deleted"]:
                n_before = sum(1 for i in before[c].column("_invoice_id").to_pylist() if i == inv)
                n_after = sum(1 for i in after.column("_invoice_id").to_pylist() if i == inv)
                shrunk |= n_after < n_before
        assert shrunk  # some child table lost the deleted lines' rows


def test_cli_run_loads_audits_and_publishes_into_iceberg(tmp_path: Path) -> None:
    """`invoice-pipeline run` with backend iceberg: the sources loaded, the audit passed, `main` moved;
    no DuckDB warehouse file is created."""
    import yaml

    from .conftest import cli_in
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=20) as sim:
        app, config = iceberg_app(tmp_path, {"agv": sim.source_config()})
        (tmp_path / "c.yaml").write_text(config.read_text())
        done = cli_in(tmp_path, "run")
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("agv "))
    assert line.split()[1:4] == ["ok", "20", "20"]
    assert published(app, "main", "invoices").num_rows == 20
    assert not (tmp_path / "unused.duckdb").exists()
    assert yaml.safe_load(config.read_text())["warehouse"]["backend"] == "iceberg"


def test_unreachable_catalog_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    from invoice_pipeline.errors import ConfigError
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=1) as sim:
        app, _ = iceberg_app(tmp_path, {"agv": sim.source_config()},
                             {"catalog_uri": "postgresql+psycopg2://pipeline:sekret-pw@127.0.0.1:1/iceberg",
                              "warehouse": f"file://{tmp_path}/wh"})
        with pytest.raises(ConfigError, match="warehouse.iceberg.catalog_uri': cannot open the Iceberg catalog") as err:
            run_source(app, "agv")
    assert "sekret-pw" not in str(err.value)
