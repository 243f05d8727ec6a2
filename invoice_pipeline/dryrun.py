"""`invoice-pipeline run --dry-run`: the window each source would read and the calls it would make.

No API call, no write, no Dagster run: the stored cursors are read under the warehouse's writer lock
with a read-only connection (as `status` does, invoice_pipeline/status.py), and the window is planned
by the same function a run uses (pipeline.plan_window), or is the backfill window given.
"""

from __future__ import annotations

import math
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
    """The API calls of one extraction of `window`, per source type (the clients in sources/*)."""
    from invoice_pipeline.sources import source_class

    kind = config.type
    page = config.page_size or source_class(kind).default_page_size
    if kind == "oracle_occ":
        return (f"login (bearer token), then list pages of GET /ccstore/v1/selfservice/invoices with "
                f"q=LastUpdateDate>='{window.start.isoformat()}', orderBy=CustomerTransactionId:asc, "
                f"limit={page}, then one detail call GET .../invoices/<id> per listed invoice "
                f"({config.concurrency} at a time)")
    if kind == "softwareone":
        from invoice_pipeline.sources.softwareone.client import LIST_PATH, ORDER, SELECT, window_filter

        return (f"list pages of GET {LIST_PATH}?{window_filter(window)}&{SELECT}&{ORDER}"
                f"&limit={page}&offset=..., the first page giving $meta.pagination.total, the "
                f"rest {config.concurrency} at a time; invoices without their lines re-requested by id")
    if kind == "agvance":
        size = getattr(config, "window_size", None)
        slices = math.ceil((window.end - window.start) / size) if size else 1
        span = f"{size.total_seconds() / 86400:g} days" if size else "the whole window"
        return (f"login (ApiKey + SessionID), then GetInvoicesList per lastModified slice of {span}: "
                f"{max(slices, 1)} slice(s), {config.concurrency} at a time, a slice the API refuses as too "
                "large halved until it fits; then the invoices' details")
    if kind == "crmcom":
        return ("login (token), then pages of POST /accounts_receivable/list, then for every accounts "
                f"receivable the pages of /invoices/list ({config.concurrency} ARs at a time); the API has "
                "no date filter, so every invoice is listed and those whose updated_date falls inside the "
                "window are kept")
    return f"the {kind} client's list and detail calls"


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
