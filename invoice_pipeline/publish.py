"""Publishing what readers see: the conformed tables' upkeep, the Parquet lake, the read-only snapshot.

Readers never open the working database (DuckDB's lock would block the pipeline, see FACTS.md):
they get a snapshot file swapped in atomically, written in a storage version DuckDB 1.4+ opens.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from invoice_pipeline.config import AppConfig
from invoice_pipeline.conformed import CONFORMED_TABLES
import duckdb

from invoice_pipeline.reconcile import create_exceptions_view
from invoice_pipeline.sql import quote, sql_literal
from invoice_pipeline.views import create_analyst_views
from invoice_pipeline.warehouse import Warehouse, apply_comments

log = logging.getLogger("invoice_pipeline.publish")

PUBLISHED_STORAGE_VERSION = "v1.4.0"


def refresh_conformed(wh: Warehouse, configured_sources: list[str]) -> dict[str, dict[str, int]]:
    """Remove rows of sources no longer in the config; return row counts per table and source."""
    counts: dict[str, dict[str, int]] = {}
    with wh.writer() as con:
        wh.ensure_main(con)
        for table in CONFORMED_TABLES:
            placeholders = ", ".join("?" for _ in configured_sources) or "NULL"
            con.execute(f"DELETE FROM main.{table} WHERE source_name NOT IN ({placeholders})", configured_sources)
            counts[table] = dict(
                con.execute(f"SELECT source_name, count(*) FROM main.{table} GROUP BY 1 ORDER BY 1").fetchall()
            )
    return counts


def _safe_dirname(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:80]
    return cleaned if cleaned == name else f"{cleaned}_{uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:8]}"


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace a folder by a fully written one; readers see the old or the new files."""
    old = final.with_name(final.name + f".old-{uuid.uuid4().hex[:6]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def export_parquet(wh: Warehouse, app: AppConfig) -> dict[str, int]:
    """One folder per table: conformed tables hive-partitioned by source_name, source tables per schema."""
    root = Path(app.warehouse.parquet_dir)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    with wh.writer() as con:
        jobs: list[tuple[str, str, Path, bool]] = [
            (f"main.{t}", t, root / t, True) for t in CONFORMED_TABLES
        ]
        for source in app.sources:
            exists = con.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", [source]).fetchone()[0]
            if not exists:
                continue
            for name in wh.source_tables(con, source).values():
                jobs.append((f"{quote(source)}.{quote(name)}", f"{source}.{name}", root / source / _safe_dirname(name), False))
        for relation, label, final, partitioned in jobs:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:6]}")
            n = con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]
            target = str(tmp).replace("'", "''")
            if partitioned:
                con.execute(f"COPY (SELECT * FROM {relation}) TO '{target}' (FORMAT parquet, PARTITION_BY (source_name))")
                tmp.mkdir(exist_ok=True)  # an empty table writes no folder
            else:
                tmp.mkdir()
                con.execute(f"COPY (SELECT * FROM {relation}) TO '{target}/data.parquet' (FORMAT parquet)")
            _swap_dir(tmp, final)
            written[label] = n
    return written


def publish_snapshot(wh: Warehouse, app: AppConfig) -> dict[str, int]:
    """Copy the conformed tables into a new file and swap it in with os.replace."""
    final = Path(app.warehouse.published_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:6]}")
    counts: dict[str, int] = {}
    with wh.writer() as con:
        con.execute(f"ATTACH {sql_literal(str(tmp))} AS snapshot (STORAGE_VERSION '{PUBLISHED_STORAGE_VERSION}')")
        try:
            for table in CONFORMED_TABLES:
                con.execute(f"CREATE TABLE snapshot.main.{table} AS SELECT * FROM main.{table}")
                counts[table] = con.execute(f"SELECT count(*) FROM snapshot.main.{table}").fetchone()[0]
        finally:
            con.execute("DETACH snapshot")
    # Views and comments are created by a connection to the snapshot itself, so that they bind to
    # its own tables, before anyone can see the file.
    snap = duckdb.connect(str(tmp))
    try:
        apply_comments(snap)
        create_analyst_views(snap)
        create_exceptions_view(snap)
        snap.execute("CHECKPOINT")
    finally:
        snap.close()
    os.replace(tmp, final)
    return counts


def publish(app: AppConfig, wh: Warehouse) -> dict:
    snapshot = publish_snapshot(wh, app)
    parquet = export_parquet(wh, app)
    log.info("published %s and %d Parquet tables under %s", app.warehouse.published_path, len(parquet), app.warehouse.parquet_dir)
    return {"published_path": str(app.warehouse.published_path), "snapshot_rows": snapshot, "parquet_rows": parquet}
