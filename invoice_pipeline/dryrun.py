"""`invoice-pipeline run --dry-run`: the window each source would read and the calls it would make.

No API call, no write, no Dagster run: the stored cursors are read under the warehouse's writer lock
with a read-only connection (as `status` does, invoice_pipeline/status.py), and the window is planned
by the same function a run uses (pipeline.plan_window), or is the backfill window given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from invoice_pipeline.config import AppConfig, SourceConfig
from invoice_pipeline.pipeline import plan_window
from invoice_pipeline.sources.base import Window
from invoice_pipeline.timeutil import utc_now


@dataclass
class PlannedRead:
    source: str
    source_type: str
    mode: str  # incremental | backfill
    cursor_at: datetime | None
    window: Window
    calls: str  # what the run would ask the API, in words


def describe_calls(config: SourceConfig, window: Window) -> str:
    """The API calls of one extraction of `window`: the source's own words (Source.describe_calls)."""
    from invoice_pipeline.sources import source_class

    return source_class(config.type).describe_calls(config, window)


def read_cursors(app: AppConfig, wait_s: float = 30.0) -> dict[str, datetime]:
    """The stored cursors, read-only (an empty dict when nothing was ever loaded)."""
    from invoice_pipeline.writer_lock import acquire_writer_lock

    db = Path(app.warehouse.duckdb_path)
    if not db.exists():
        return {}
    lock = acquire_writer_lock(db, wait_s)
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            found = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = '_pipeline_cursors'"
            ).fetchone()[0]
            if not found:
                return {}
            return dict(con.execute("SELECT source_name, cursor_at FROM main._pipeline_cursors").fetchall())
    finally:
        lock.release()


def plan_reads(app: AppConfig, sources: list[str], backfill: Window | None = None,
               now: datetime | None = None) -> list[PlannedRead]:
    now = (now or utc_now()).replace(microsecond=0)
    cursors = read_cursors(app)
    plans = []
    for name in sources:
        config = app.sources[name]
        window = backfill or plan_window(config, cursors.get(name), now)
        plans.append(PlannedRead(name, config.type, "backfill" if backfill else "incremental",
                                 cursors.get(name), window, describe_calls(config, window)))
    return plans


def format_plan(plans: list[PlannedRead]) -> str:
    lines = ["dry run: no API call, no write, no Dagster run"]
    for p in plans:
        cursor = p.cursor_at.isoformat() if p.cursor_at else "none (first run: from start_date)"
        lines.append(f"{p.source} ({p.source_type}): {p.mode} window {p.window.start.isoformat()} .. "
                     f"{p.window.end.isoformat()} (stored cursor {cursor}"
                     f"{'; the cursor would not move' if p.mode == 'backfill' else ''})")
        lines.append(f"  calls: {p.calls}")
    lines.append("then: re-poll of open invoices, deletion reconciliation where its reconcile_schedule is due, "
                 "the conformed model, its checks, and the publish")
    return "\n".join(lines)
