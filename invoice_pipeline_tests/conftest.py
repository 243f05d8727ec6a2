"""Shared fixtures: configs pointing at simulators, isolated working directories."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from invoice_pipeline.config import AppConfig, parse_config
from invoice_pipeline.sql import quote
from invoice_pipeline.warehouse import Warehouse

# Columns that name the run or its clock: they differ between any two runs of the same data.
RUN_COLUMNS = frozenset({"_loaded_at", "_run_id", "run_id", "detected_at", "extracted_at", "observed_at"})


def make_app(tmp_path: Path, sources: dict[str, dict[str, Any]], **source_overrides: Any) -> AppConfig:
    """An AppConfig whose warehouse lives under tmp_path."""
    blocks = {name: {**block, **source_overrides} for name, block in sources.items()}
    return parse_config(
        {
            "warehouse": {
                "duckdb_path": str(tmp_path / "warehouse.duckdb"),
                "published_path": str(tmp_path / "published" / "warehouse.duckdb"),
                "parquet_dir": str(tmp_path / "parquet"),
            },
            "sources": blocks,
        }
    )


def cli_in(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`invoice-pipeline ARGS --config tmp_path/c.yaml` as a user runs it: a subprocess in tmp_path with
    DAGSTER_HOME there and no INVOICE_PIPELINE_* variable of the test environment."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_")},
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", *args, "--config", str(tmp_path / "c.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def warehouse_document(app: AppConfig) -> dict[str, Any]:
    """The `warehouse:` block of a config file that loads back as app.warehouse."""
    return {k: v.total_seconds() if isinstance(v, timedelta) else str(v) for k, v in app.warehouse.model_dump(exclude_none=True).items()}


def write_app_config(tmp_path: Path, sources: dict[str, dict[str, Any]]) -> tuple[AppConfig, Path]:
    """make_app() plus the same config as a YAML file, for code that takes a config path (Dagster, CLI)."""
    app = make_app(tmp_path, sources)
    path = tmp_path / "cfg.yaml"
    warehouse = warehouse_document(app)
    path.write_text(yaml.safe_dump({"warehouse": warehouse, "sources": sources}))
    return app, path


def table_rows(app: AppConfig, schemas: tuple[str, ...], skip_tables: set[str]) -> dict[str, list[tuple]]:
    """Every row of every table in `schemas` (but skip_tables), without RUN_COLUMNS, in a stable order."""
    out = {}
    with Warehouse(app.warehouse).reader() as con:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables where list_contains(?, table_schema) "
            "and table_type = 'BASE TABLE' order by 1, 2", [list(schemas)]).fetchall()
        for schema, table in tables:
            if table in skip_tables:
                continue
            cols = [r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_schema = ? and table_name = ? "
                "order by ordinal_position", [schema, table]).fetchall() if r[0] not in RUN_COLUMNS]
            sql = f"select {', '.join(quote(c) for c in cols)} from {quote(schema)}.{quote(table)} order by all"
            out[f"{schema}.{table}"] = con.execute(sql).fetchall()
    return out


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty working directory with its own DAGSTER_HOME (no leaks between tests)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INVOICE_PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path
