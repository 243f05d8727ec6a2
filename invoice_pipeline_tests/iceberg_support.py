"""Configs and table reads for the Iceberg backend tests (docs/ICEBERG.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from invoice_pipeline.config import AppConfig, parse_config

pytest.importorskip("pyiceberg", reason="the iceberg extra is not installed (pip install -e '.[iceberg]')")


def iceberg_block(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A SQLite catalog and a local warehouse folder under tmp_path (one machine)."""
    (tmp_path / "iceberg").mkdir(exist_ok=True)
    return {"catalog_uri": f"sqlite:///{tmp_path / 'iceberg' / 'catalog.db'}",
            "warehouse": f"file://{tmp_path / 'iceberg' / 'data'}", **overrides}


def iceberg_app(tmp_path: Path, sources: dict[str, dict[str, Any]], iceberg: dict[str, Any] | None = None,
                write: bool = True) -> tuple[AppConfig, Path]:
    doc = {"warehouse": {"backend": "iceberg", "duckdb_path": str(tmp_path / "unused.duckdb"),
                         "iceberg": iceberg or iceberg_block(tmp_path)},
           "sources": sources}
    path = tmp_path / "iceberg.yaml"
    if write:
        path.write_text(yaml.safe_dump(doc))
    return parse_config(doc), path


def ingest(app: AppConfig, namespace: str, table: str) -> pa.Table:
    """Every row of a table as the writers left it (the INGEST branch; run tables live on main)."""
    from invoice_pipeline.iceberg.catalog import INGEST, open_catalog

    t = open_catalog(app.warehouse.iceberg).load_table((namespace, table))
    if table.startswith("_pipeline"):
        return t.scan().to_arrow()
    if INGEST not in t.metadata.refs:
        return t.schema().as_arrow().empty_table()
    return t.scan().use_ref(INGEST).to_arrow()


def published(app: AppConfig, namespace: str, table: str) -> pa.Table:
    """What readers see: `main`."""
    from invoice_pipeline.iceberg.catalog import open_catalog

    return open_catalog(app.warehouse.iceberg).load_table((namespace, table)).scan().to_arrow()


def duplicates(rows: pa.Table, keys: list[str]) -> int:
    counts = rows.group_by(keys).aggregate([(keys[0], "count")])
    return sum(1 for n in counts.column(f"{keys[0]}_count").to_pylist() if n > 1)
