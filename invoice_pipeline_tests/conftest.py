"""Shared fixtures: configs pointing at simulators, isolated working directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from invoice_pipeline.config import AppConfig, parse_config


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


def write_app_config(tmp_path: Path, sources: dict[str, dict[str, Any]]) -> tuple[AppConfig, Path]:
    """make_app() plus the same config as a YAML file, for code that takes a config path (Dagster, CLI)."""
    app = make_app(tmp_path, sources)
    path = tmp_path / "cfg.yaml"
    warehouse = {k: str(v) for k, v in app.warehouse.model_dump().items()}
    path.write_text(yaml.safe_dump({"warehouse": warehouse, "sources": sources}))
    return app, path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty working directory with its own DAGSTER_HOME (no leaks between tests)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INVOICE_PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path
