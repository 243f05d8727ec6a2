"""`invoice-pipeline dbt-sources` after a real run: the YAML lists the published snapshot's real
tables and columns with their comments and key tests; and (with the `dbt` extra installed) a dbt-duckdb
project using it compiles and `dbt build` runs its tests against the snapshot, offline."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from invoice_pipeline.conformed import CONFORMED_KEYS
from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_")},
           "DAGSTER_HOME": str(root / "dagster_home")}
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", *args, "--config", str(root / "c.yaml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dbt")
    with SIMULATOR_CLASS(size=25) as sim:
        (root / "c.yaml").write_text(yaml.safe_dump({
            "warehouse": {"duckdb_path": str(root / "w.duckdb"), "published_path": str(root / "p" / "w.duckdb"),
                          "parquet_dir": str(root / "parquet")},
            "sources": {"agv": sim.source_config()}}))
        missing = _cli(root, "dbt-sources", "--output", str(root / "x.yml"))
        assert missing.returncode == 1 and "no published snapshot" in missing.stderr, missing.stderr
        run = _cli(root, "run")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    proc = _cli(root, "dbt-sources", "--output", str(root / "proj" / "models" / "sources.yml"))
    assert proc.returncode == 0, proc.stderr
    return root


def test_sources_yaml_matches_the_snapshot(project: Path) -> None:
    doc = yaml.safe_load((project / "proj" / "models" / "sources.yml").read_text())
    (source,) = doc["sources"]
    assert (source["name"], source["database"], source["schema"]) == ("invoice_pipeline", "published", "main")
    tables = {t["name"]: t for t in source["tables"]}
    with duckdb.connect(str(project / "p" / "w.duckdb"), read_only=True) as con:
        real = {}
        for table, column, comment in con.execute(
                "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE schema_name = 'main' AND NOT internal "
                "AND database_name = current_database() AND NOT starts_with(table_name, '_') ORDER BY table_name, column_index").fetchall():
            real.setdefault(table, []).append((column, comment))
    assert set(tables) == set(real)
    for table, columns in real.items():
        assert [(c["name"], c.get("description")) for c in tables[table]["columns"]] == columns
    assert {"ar_aging", "ar_aging_snapshot", "invoice_history"} <= set(tables)
    invoices = {c["name"]: c for c in tables["invoices"]["columns"]}
    assert invoices["invoice_id"]["data_tests"] == ["not_null"] and invoices["total_amount"]["description"]
    unique = tables["invoice_lines"]["data_tests"][0]["unique"]["column_name"]
    assert all(k in unique for k in CONFORMED_KEYS["invoice_lines"])


@pytest.mark.skipif(importlib.util.find_spec("dbt.adapters.duckdb") is None,
                    reason="dbt-duckdb not installed (pip install -e '.[dbt]')")
def test_dbt_build_runs_against_the_snapshot(project: Path) -> None:
    proj = project / "proj"
    (proj / "dbt_project.yml").write_text(yaml.safe_dump({
        "name": "invoices_dbt", "version": "1.0.0", "profile": "invoices_dbt", "config-version": 2,
        "model-paths": ["models"]}))
    (proj / "profiles.yml").write_text(yaml.safe_dump({"invoices_dbt": {"target": "dev", "outputs": {"dev": {
        "type": "duckdb", "path": str(project / "dbt.duckdb"), "threads": 1,
        "attach": [{"path": str(project / "p" / "w.duckdb"), "alias": "published", "read_only": True}]}}}}))
    (proj / "models" / "open_balance_by_source.sql").write_text(
        "{{ config(materialized='table') }}\nselect source_name, sum(balance_due) as open_balance\n"
        "from {{ source('invoice_pipeline', 'invoices') }}\nwhere not is_deleted\ngroup by 1\n")
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.run([str(dbt), "build", "--project-dir", str(proj), "--profiles-dir", str(proj)],
                          cwd=proj, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "ERROR=0" in proc.stdout and "PASS=" in proc.stdout, proc.stdout[-2000:]
    passed = int(proc.stdout.rsplit("PASS=", 1)[1].split()[0])
    # the model, not_null on each key column, unique per conformed table
    assert passed == 1 + sum(len(k) for k in CONFORMED_KEYS.values()) + len(CONFORMED_KEYS), proc.stdout[-2000:]
    with duckdb.connect(str(project / "dbt.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT source_name FROM main.open_balance_by_source").fetchall()
    assert rows == [("agv",)]


@pytest.mark.skipif(not Path(sys.executable).with_name("duckdb").exists(),
                    reason="duckdb CLI not installed (pip install -e '.[analyst]')")
def test_the_readmes_duckdb_cli_command_reads_the_snapshot(project: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).with_name("duckdb")), "-readonly", str(project / "p" / "w.duckdb"),
                           "-csv", "-c", "SELECT source_name, count(*) AS n FROM invoices GROUP BY 1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["source_name,n", "agv,25"]
