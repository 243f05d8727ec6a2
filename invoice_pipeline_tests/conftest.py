"""Shared fixtures: configs pointing at simulators, isolated working directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty working directory with its own DAGSTER_HOME (no leaks between tests)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INVOICE_PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path
