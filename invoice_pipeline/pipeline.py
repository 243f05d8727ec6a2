"""Run one source end to end in plain Python: plan the window, extract, prepare (batch.py), merge, cursor.

This is what the Dagster assets call; tests call it directly too. `run_source` reads a modification
window; `load_records` loads records read another way (re-poll, deletion reconciliation) along the
same path without touching the cursor.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime

from invoice_pipeline.batch import GC_FIRST_THRESHOLD, LoadBatch, prepare_batch
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.config import AppConfig, SourceConfig
from invoice_pipeline.flatten import FIELD, ROOT_TABLE
from invoice_pipeline.history import record_history
from invoice_pipeline.preparing import BatchPreparer
from invoice_pipeline.sources import source_class
from invoice_pipeline.sources.base import Source, SourceRecord, Window
from invoice_pipeline.sql import quote
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import SessionTurns, Warehouse, WriterTurns

log = logging.getLogger("invoice_pipeline.pipeline")
PREPARE_AHEAD = 2  # batches being prepared at once: keeps the worker busy, memory bounded


@dataclass
class RunSummary:
    source_name: str
    source_type: str
    run_id: str
    mode: str
    window_start: datetime
    window_end: datetime
    started_at: datetime | None = None
    status: str = "running"
    invoices_extracted: int = 0
    invoices_loaded: int = 0
    invoices_stale: int = 0
    invoices_before_start: int = 0
    quarantined: int = 0
    pages: int = 0
    api_calls: int = 0
    retries: int = 0
    duration_s: float = 0.0
    rows_written: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    error: str | None = None

    def as_metadata(self) -> dict:
        data = asdict(self)
        data["window_start"] = self.window_start.isoformat()
        data["window_end"] = self.window_end.isoformat()
        data["started_at"] = self.started_at.isoformat() if self.started_at else None
        return data


def plan_window(config: SourceConfig, cursor: datetime | None, loaded_at: datetime) -> Window:
    """From the stored cursor minus the lookback (never before start_date) to the run's start, frozen."""
    if cursor is None:
        return Window(config.start_date, loaded_at)
    return Window(max(config.start_date, cursor - config.lookback), loaded_at)


def build_source(app: AppConfig, source_name: str) -> Source:
    config = app.sources[source_name]
    return source_class(config.type)(source_name, config)


@contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Fewer garbage-collector passes while loading (restored after).

    Why: the load path allocates millions of short-lived, acyclic containers; with CPython's default
    thresholds the collector re-scans the heap (large in a Dagster process) often enough to cost a
    noticeable share of a run (benchmarks/RESULTS.md, "Figures behind design choices in the code"). Freezing what exists and raising the first threshold keeps collections but makes them rare.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], GC_FIRST_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def run_source(
    app: AppConfig,
    source_name: str,
    *,
    warehouse: Warehouse | None = None,
    window: Window | None = None,
    source: Source | None = None,
) -> RunSummary:
    """Incremental run (window=None: from the cursor, moving it on success) or a backfill of
    an explicit window (the cursor is left alone). Raises on failure, after recording it."""
    if app.warehouse.backend == "iceberg":  # the one seam to the Iceberg backend (docs/ICEBERG.md)
        from invoice_pipeline.iceberg.run import run_source_iceberg

        return run_source_iceberg(app, source_name, summary_type=RunSummary, plan_window=plan_window, window=window,
                                  source=source, mode=None)
    wh, started, loaded_at, cursor = _begin(app, source_name, warehouse)
    incremental = window is None
    planned = window or plan_window(app.sources[source_name], cursor, loaded_at)
    return _load(app, source_name, wh, source, lambda src: src.extract(planned),
                 mode="incremental" if incremental else "backfill", window=planned,
                 cursor=planned.end if incremental else None, loaded_at=loaded_at, started=started)


def load_records(
    app: AppConfig,
    source_name: str,
    records: Callable[[Source], Iterable[Sequence[SourceRecord]]],
    *,
    mode: str,
    warehouse: Warehouse | None = None,
    source: Source | None = None,
    observed: bool = True,
) -> RunSummary:
    """Load records read some other way than a modification window (a re-poll's reads, invoices a
    deletion reconciliation found again, a replay's raw payloads) along the path of every run:
    merge, quarantine, raw payload store, run log (as `mode`) and history step. The cursor is never
    moved.

    records(source) gives the batches; the run log's window is start_date .. the run's start (any invoice).
    observed=False: the records come from the raw payload store (replay.py), not from the source
    now: each is loaded whatever its age (start_date filters only what a source sends), and the
    history step restores the deletion marks the rebuild cleared (history.record_history, step 1).
    """
    if app.warehouse.backend == "iceberg":  # the same seam as run_source's (docs/ICEBERG.md)
        from invoice_pipeline.iceberg.run import load_records_iceberg

        return load_records_iceberg(app, source_name, records, summary_type=RunSummary, mode=mode, source=source,
                                    observed=observed)
    wh, started, loaded_at, _ = _begin(app, source_name, warehouse)
    window = Window(app.sources[source_name].start_date, loaded_at)
    return _load(app, source_name, wh, source, records, mode=mode, window=window,
                 cursor=None, loaded_at=loaded_at, started=started, observed=observed)


def _begin(app: AppConfig, source_name: str, warehouse: Warehouse | None
           ) -> tuple[Warehouse, float, datetime, datetime | None]:
    """The warehouse, the run's clock and timestamp (loaded_at: docs/DESIGN.md, glossary) and the
    stored cursor, with main's and the source's tables ensured."""
    wh = warehouse or Warehouse(app.warehouse)
    started = time.monotonic()
    loaded_at = utc_now().replace(microsecond=0)
    with wh.writer() as con:
        wh.ensure_main(con)
        wh.ensure_source(con, source_name)
        cursor = wh.cursor(con, source_name)
    return wh, started, loaded_at, cursor


@_fewer_gc_passes()
def _load(
    app: AppConfig,
    source_name: str,
    wh: Warehouse,
    source: Source | None,
    records: Callable[[Source], Iterable[Sequence[SourceRecord]]],
    *,
    mode: str,
    window: Window,
    cursor: datetime | None,
    loaded_at: datetime,
    started: float,
    observed: bool = True,
) -> RunSummary:
    """Extract (records(src)), prepare, write; `cursor` (None: left alone) is committed with the
    last batch; observed: see load_records. Closes the source; raises on failure, after recording
    it in the run log."""
    config = app.sources[source_name]
    summary = RunSummary(source_name, config.type, uuid.uuid4().hex[:12], mode, window.start, window.end, loaded_at)
    log.info("source '%s': %s run %s, window %s .. %s", source_name, mode, summary.run_id,
             window.start.isoformat(), window.end.isoformat())
    src = source or build_source(app, source_name)
    # Three stages overlap: this thread extracts batch k+2 while another process prepares k+1
    # (preparing.py) and a thread writes k (DuckDB releases the GIL). Writes happen one at a time,
    # in order; the last batch carries the cursor and is written only after every earlier one committed.
    preparer = BatchPreparer(src, summary.run_id, loaded_at, config.start_date if observed else None, config.prepare_processes)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{source_name}-writer")
    writing: Future | None = None
    turns = wh.turns()
    src.stored_fields = functools.partial(stored_fields, turns, source_name)
    try:
        preparing: deque[Future[tuple[LoadBatch, int]]] = deque()
        pending: LoadBatch | None = None

        def take_prepared() -> None:
            nonlocal pending, writing
            batch, before = preparing.popleft().result()
            summary.invoices_before_start += before
            if pending is not None:
                if writing is not None:
                    writing.result()
                writing = writer.submit(_write, wh, turns, pending, summary)
            pending = batch

        for batch_records in records(src):
            summary.invoices_extracted += len(batch_records)
            pause_point("extract")
            preparing.append(preparer.submit(batch_records))
            while preparing and (len(preparing) > PREPARE_AHEAD or preparing[0].done()):
                take_prepared()
        while preparing:
            take_prepared()
        if writing is not None:
            writing, done = None, writing
            done.result()
        if pending is None:
            pending, _ = prepare_batch(src, [], summary.run_id, loaded_at)
        pending.cursor = cursor  # committed in the same transaction as the last rows
        _write(wh, turns, pending, summary)
        turns.close()
        # one history version per new observation
        record_history(wh, source_name, run_id=summary.run_id if observed else None)
        summary.status = "success"
    except Exception as exc:
        summary.status = "failed"
        summary.error = str(exc)
        raise
    finally:
        if writing is not None:  # a failed extraction still lets the committed-or-not write finish
            try:
                writing.result()
            except Exception:  # noqa: BLE001 - the extraction's error is the one to report
                log.debug("background write failed after the run had already failed", exc_info=True)
        writer.shutdown(wait=True)
        preparer.close()
        turns.close()
        src.close()
        summary.pages = src.stats.pages
        summary.api_calls = src.http.stats.api_calls
        summary.retries = src.http.stats.retries
        summary.extra = dict(src.stats.extra, scanned=src.stats.scanned, preparing_processes=preparer.started,
                             writer_turns=turns.turns)
        summary.duration_s = round(time.monotonic() - started, 3)
        record_run(wh, summary)
    log.info(
        "source '%s': run %s %s: %d invoices extracted, %d loaded, %d stale, %d quarantined, %d API calls in %.1fs",
        source_name, summary.run_id, summary.status, summary.invoices_extracted, summary.invoices_loaded,
        summary.invoices_stale, summary.quarantined, summary.api_calls, summary.duration_s,
    )
    return summary


def stored_fields(
    turns: WriterTurns | SessionTurns, source_name: str, ids: Sequence[str], fields: Sequence[str]
) -> dict[str, dict]:
    """Source.stored_fields for this warehouse: top-level raw fields of the stored (current) version
    of these invoices, read from the source's flattened root table (values as the API sent them)."""
    s = quote(source_name)
    with turns.connection() as con:  # the run's own turn: no second lock on the file
        columns = dict(con.execute(
            f"SELECT field_path, column_name FROM {s}._columns WHERE table_name = ? AND list_contains(?, field_path)",
            [ROOT_TABLE, [FIELD + f for f in fields]]).fetchall())
        known = [f for f in fields if FIELD + f in columns]
        select = "".join(f", {quote(columns[FIELD + f])}" for f in known)
        rows = con.execute(
            f"SELECT _invoice_id{select} FROM {s}.{quote(ROOT_TABLE)} WHERE list_contains(?, _invoice_id)", [list(ids)]
        ).fetchall()
    return {row[0]: dict(zip(known, row[1:])) for row in rows}


def _write(wh: Warehouse, turns: WriterTurns | SessionTurns, batch: LoadBatch, summary: RunSummary) -> None:
    with turns.connection() as con:
        result = wh.write_batch(con, batch)
    summary.invoices_loaded += result.accepted
    summary.invoices_stale += result.stale
    summary.quarantined += batch.quarantine.num_rows
    for table, n in result.rows_written.items():
        summary.rows_written[table] = summary.rows_written.get(table, 0) + n


def record_run(wh: Warehouse, s: RunSummary) -> None:
    """One row in main._pipeline_runs; a run recorded as success has its history recorded (lifecycle)."""
    try:
        with wh.writer() as con:
            con.execute(
                "INSERT INTO main._pipeline_runs VALUES (?, ?, ?, ?, ?, ?, now(), ?, ?, ?, ?, ?, ?, ?, ?)",
                [s.run_id, s.source_name, s.mode, s.window_start, s.window_end, s.started_at, s.status, s.invoices_extracted, s.invoices_loaded,
                 s.invoices_stale, s.quarantined, s.pages, s.api_calls, s.error],
            )
    except Exception:  # the run's own outcome matters more than its log row
        log.exception("could not record run %s", s.run_id)
