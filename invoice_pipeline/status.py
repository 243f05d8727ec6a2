"""`invoice-pipeline status`: per source, how far it is loaded, how its last run went, what is wrong.

Where it reads (docs/OPERATIONS.md, "Status"): the working database, under the warehouse's writer
lock, because run history, failing checks and quarantine live only there and DuckDB lets no other
process open a file a writer has open. Status holds the lock only for a few short queries (well under a
second for hundreds of thousands of invoices) and waits for it at most `wait_s` seconds: a run hands
the lock over between batches at least every `warehouse.writer_turn_seconds`, so a running pipeline
is delayed by that one read, not blocked. If the lock does not come in time, status falls back to the
published snapshot (read-only, no lock): cursors and the last publish as of that snapshot, and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from invoice_pipeline.config import AppConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.sql import quote

DEFAULT_WAIT_S = 30.0


@dataclass
class LastRun:
    run_id: str
    mode: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    window_start: datetime | None
    window_end: datetime | None
    invoices_extracted: int
    invoices_loaded: int
    invoices_stale: int
    quarantined: int
    api_calls: int
    error: str | None


@dataclass
class SourceStatus:
    source: str
    source_type: str
    cursor_at: datetime | None = None
    last_run: LastRun | None = None  # the last load (incremental or backfill; re-polls and reconciliations aside)
    last_success_at: datetime | None = None
    failing_checks: dict[str, int] = field(default_factory=dict)  # rule -> invoices of this source failing it
    blocking_failing: list[str] = field(default_factory=list)  # of which the rules that stop a publish
    quarantined: int | None = None  # records in <source>._quarantine (None: not known from a snapshot)


@dataclass
class Status:
    read_from: str  # "working warehouse" or "published snapshot (...)"
    warehouse_path: str
    published_path: str
    last_publish_id: str | None = None
    last_publish_at: datetime | None = None
    sources: list[SourceStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))


def _has_table(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? "
        "AND table_name = ?", [schema, name]).fetchone()[0] > 0


def _has_view(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() AND schema_name = ? "
        "AND view_name = ?", [schema, name]).fetchone()[0] > 0


def _cursors(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    if not _has_table(con, "main", "_pipeline_cursors"):
        return {}
    return dict(con.execute("SELECT source_name, cursor_at FROM main._pipeline_cursors").fetchall())


def read_working(con: duckdb.DuckDBPyConnection, app: AppConfig, status: Status) -> None:
    """Fill `status` from the working database (an open, read-only connection)."""
    cursors = _cursors(con)
    runs: dict[str, LastRun] = {}
    successes: dict[str, datetime] = {}
    if _has_table(con, "main", "_pipeline_runs"):
        for row in con.execute(
            """SELECT source_name, run_id, mode, status, started_at, finished_at, window_start, window_end,
                      invoices_extracted, invoices_loaded, invoices_stale, quarantined, api_calls, error
               FROM main._pipeline_runs WHERE mode IN ('incremental', 'backfill')
               QUALIFY row_number() OVER (PARTITION BY source_name ORDER BY finished_at DESC NULLS LAST) = 1"""
        ).fetchall():
            runs[row[0]] = LastRun(*row[1:])
        successes = dict(con.execute(
            "SELECT source_name, max(finished_at) FROM main._pipeline_runs WHERE status = 'success' "
            "AND mode IN ('incremental', 'backfill') GROUP BY 1"
        ).fetchall())
    failing: dict[str, dict[str, tuple[int, bool]]] = {}
    if _has_view(con, "main", "reconciliation_exceptions"):
        # A fresh evaluation of every audit rule (invoice_pipeline/audit.py), per source.
        for source, rule, blocking, n in con.execute(
            "SELECT source_name, rule, bool_or(blocking), count(*) FROM main.reconciliation_exceptions "
            "GROUP BY ALL ORDER BY 1, 2"
        ).fetchall():
            failing.setdefault(source, {})[rule] = (n, blocking)
    if _has_table(con, "main", "_pipeline_publishes"):
        row = con.execute(
            "SELECT snapshot_id, published_at FROM main._pipeline_publishes ORDER BY published_at DESC LIMIT 1"
        ).fetchone()
        if row:
            status.last_publish_id, status.last_publish_at = row
    for name, cfg in app.sources.items():
        quarantined = (con.execute(f"SELECT count(*) FROM {quote(name)}._quarantine").fetchone()[0]
                       if _has_table(con, name, "_quarantine") else 0)
        rules = failing.get(name, {})
        status.sources.append(SourceStatus(
            source=name, source_type=cfg.type, cursor_at=cursors.get(name), last_run=runs.get(name),
            last_success_at=successes.get(name),
            failing_checks={rule: n for rule, (n, _) in rules.items()},
            blocking_failing=[rule for rule, (_, blocking) in rules.items() if blocking],
            quarantined=quarantined,
        ))


def read_snapshot(con: duckdb.DuckDBPyConnection, app: AppConfig, status: Status) -> None:
    """Fill `status` from the published snapshot: cursors and publish as of that snapshot only."""
    cursors = _cursors(con)
    if _has_table(con, "main", "_snapshot"):
        row = con.execute("SELECT snapshot_id, published_at FROM main._snapshot").fetchone()
        if row:
            status.last_publish_id, status.last_publish_at = row
    failing: dict[str, dict[str, tuple[int, bool]]] = {}
    if _has_view(con, "main", "reconciliation_exceptions"):
        for source, rule, blocking, n in con.execute(
            "SELECT source_name, rule, bool_or(blocking), count(*) FROM main.reconciliation_exceptions GROUP BY ALL"
        ).fetchall():
            failing.setdefault(source, {})[rule] = (n, blocking)
    for name, cfg in app.sources.items():
        rules = failing.get(name, {})
        status.sources.append(SourceStatus(
            source=name, source_type=cfg.type, cursor_at=cursors.get(name), quarantined=None,
            failing_checks={rule: n for rule, (n, _) in rules.items()},
            blocking_failing=[rule for rule, (_, blocking) in rules.items() if blocking],
        ))


def collect_status(app: AppConfig, wait_s: float = DEFAULT_WAIT_S) -> Status:
    """The status of every configured source; never writes, holds the writer lock only to read."""
    from filelock import Timeout

    from invoice_pipeline.writer_lock import acquire_writer_lock

    db = Path(app.warehouse.duckdb_path)
    published = Path(app.warehouse.published_path)
    status = Status(read_from="working warehouse", warehouse_path=str(db), published_path=str(published))
    if not db.exists():
        status.read_from = "nothing yet (no warehouse file: no run has written it)"
        status.sources = [SourceStatus(name, cfg.type, quarantined=0) for name, cfg in app.sources.items()]
        return status
    try:
        lock = acquire_writer_lock(db, wait_s)
    except (PipelineError, Timeout) as busy:
        if not published.exists():
            raise PipelineError(f"status: {busy}; and no published snapshot at {published} to read instead") from None
        status.read_from = (f"published snapshot {published} (the working warehouse stayed locked by a run for "
                            f"{wait_s:.0f}s: run history and quarantine not shown)")
        with duckdb.connect(str(published), read_only=True) as con:
            read_snapshot(con, app, status)
        return status
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            read_working(con, app, status)
    finally:
        lock.release()
    return status


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def format_status(status: Status) -> str:
    """Human-readable: one block per source."""
    lines = [f"read from: {status.read_from}",
             f"last publish: {status.last_publish_id or 'never'} at {_when(status.last_publish_at)} -> {status.published_path}"]
    for s in status.sources:
        lines.append("")
        lines.append(f"{s.source} ({s.source_type})")
        lines.append(f"  cursor:       {_when(s.cursor_at)}")
        run = s.last_run
        if run is None:
            lines.append("  last run:     none recorded")
        else:
            lines.append(f"  last run:     {run.status} ({run.mode}, run {run.run_id}) finished {_when(run.finished_at)}: "
                         f"{run.invoices_extracted} extracted, {run.invoices_loaded} loaded, {run.invoices_stale} stale, "
                         f"{run.quarantined} quarantined, {run.api_calls} API calls")
            if run.error:
                lines.append(f"  error:        {run.error.splitlines()[0][:300]}")
            if run.status != "success":
                lines.append(f"  last success: {_when(s.last_success_at)}")
        if s.failing_checks:
            checks = ", ".join(f"{rule} {n}{' (blocking)' if rule in s.blocking_failing else ''}"
                               for rule, n in s.failing_checks.items())
            lines.append(f"  failing checks: {checks}")
        else:
            lines.append("  failing checks: none")
        lines.append(f"  quarantined:  {'unknown' if s.quarantined is None else s.quarantined}")
    return "\n".join(lines)
