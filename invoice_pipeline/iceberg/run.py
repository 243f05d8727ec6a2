"""One source run into Iceberg: plan the window from the cursor, extract, prepare, merge, cursor, run row.

The extraction and batch preparation are the DuckDB backend's own (sources/, batch.py); only the
writes differ (merge.py). Any number of these run at once, in any processes on any machines.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from invoice_pipeline.batch import prepare_batch
from invoice_pipeline.config import AppConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.iceberg.catalog import HISTORY, ensure_main, ensure_source, open_catalog
from invoice_pipeline.iceberg.history import record_history_batch
from invoice_pipeline.iceberg.flat import known_tables, write_flat
from invoice_pipeline.iceberg.merge import read_cursor, record_run, set_cursor, stored_fields, write_batch
from invoice_pipeline.source_types import source_class
from invoice_pipeline.model import Window
from invoice_pipeline.sources.base import Source
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.timeutil import utc_now

log = logging.getLogger("invoice_pipeline.iceberg")


def run_source_iceberg(app: AppConfig, source_name: str, *, summary_type: type, plan_window: Callable,
                       window: Window | None = None, source: Source | None = None, mode: str | None = None):
    """pipeline.run_source for `warehouse.backend: iceberg` (same arguments, same RunSummary).

    pipeline.py passes its RunSummary and plan_window in: this package sits below pipeline in the
    import layers (pyproject.toml), so it does not import it back."""
    ice = app.warehouse.iceberg
    assert ice is not None  # config validation: backend iceberg needs the block
    started = time.monotonic()
    now = utc_now().replace(microsecond=0)
    catalog = open_catalog(ice)
    tables = ensure_main(catalog)
    cursor = read_cursor(tables["_pipeline_cursors"], source_name)
    mode = (mode or "backfill") if window is not None else "incremental"
    window = window or plan_window(app.sources[source_name], cursor, now)
    return _load_iceberg(app, source_name, lambda src: src.extract(window), summary_type=summary_type, mode=mode,
                         window=window, move_cursor=mode == "incremental", source=source, catalog=catalog,
                         tables=tables, now=now, started=started)


def load_records_iceberg(app: AppConfig, source_name: str, records: Callable[[Source], Iterable[Sequence]], *,
                         summary_type: type, mode: str, source: Source | None = None, observed: bool = True):
    """pipeline.load_records for `warehouse.backend: iceberg`: records read some other way than a
    modification window (a re-poll's reads) through the same writes as a run; the cursor never moves.

    The run row's window is start_date .. the run's start (any invoice), as with DuckDB. observed=False
    (a replay of the DuckDB raw payload store, replay.py) is refused: replay is DuckDB-only
    (docs/ICEBERG.md), and loading the DuckDB file's payloads into Iceberg would mix two warehouses."""
    ice = app.warehouse.iceberg
    assert ice is not None  # config validation: backend iceberg needs the block
    if not observed:
        if source is not None:
            source.close()
        raise PipelineError(f"source '{source_name}': {mode} is not available with warehouse.backend: iceberg "
                            "(docs/ICEBERG.md, 'What is DuckDB-only')")
    started = time.monotonic()
    now = utc_now().replace(microsecond=0)
    catalog = open_catalog(ice)
    window = Window(app.sources[source_name].start_date, now)
    return _load_iceberg(app, source_name, records, summary_type=summary_type, mode=mode, window=window,
                         move_cursor=False, source=source, catalog=catalog, tables=ensure_main(catalog), now=now,
                         started=started)


def _load_iceberg(app: AppConfig, source_name: str, records: Callable[[Source], Iterable[Sequence]], *,
                  summary_type: type, mode: str, window: Window, move_cursor: bool, source: Source | None,
                  catalog, tables: dict, now, started: float):
    """Extract (records(src)), prepare, merge batch by batch with its history; the cursor (only when
    move_cursor) after the last batch committed; one run row whatever the outcome. Closes the source;
    raises on failure, after recording it."""
    ice = app.warehouse.iceberg
    config = app.sources[source_name]
    source_tables = ensure_source(catalog, source_name)
    summary = summary_type(source_name, config.type, uuid.uuid4().hex[:12], mode, window.start, window.end, now)
    log.info("source '%s': %s run %s into Iceberg, window %s .. %s", source_name, mode, summary.run_id,
             window.start.isoformat(), window.end.isoformat())
    src = source or source_class(config.type)(source_name, config)
    # what lets Oracle and CRM.COM skip the detail call of an invoice listed unchanged
    src.stored_fields = functools.partial(stored_fields, tables["invoices"], source_tables["_raw_invoices"], source_name)
    conflicts = 0
    flat_tables = known_tables(catalog, source_name)

    def flat_writer(batch, result) -> None:
        flat_tables.update({n: t for n, t in known_tables(catalog, source_name).items() if n not in flat_tables})
        write_flat(catalog, source_name, flat_tables, batch.flat, batch.keys, ice.commit_retries, result)

    try:
        for batch_records in records(src):
            summary.invoices_extracted += len(batch_records)
            pause_point("extract")
            batch, before = prepare_batch(src, batch_records, summary.run_id, now, config.start_date)
            summary.invoices_before_start += before
            result = write_batch(tables, source_tables, batch, ice.commit_retries, flat_writer)
            pause_point("iceberg_invoices_written")  # tests kill a run here: invoices committed, history not
            versions, history_conflicts = record_history_batch(
                tables[HISTORY], tables["invoices"], source_name, batch.keys.column(0).to_pylist(), ice.commit_retries)
            result.conflicts += history_conflicts
            summary.rows_written[f"main.{HISTORY}"] = summary.rows_written.get(f"main.{HISTORY}", 0) + versions
            summary.invoices_loaded += result.accepted
            summary.invoices_stale += result.stale
            summary.quarantined += batch.quarantine.num_rows
            conflicts += result.conflicts
            for name, n in result.rows_written.items():
                summary.rows_written[name] = summary.rows_written.get(name, 0) + n
        if move_cursor:  # only after every batch committed: a failed run leaves it alone
            pause_point("iceberg_before_cursor")
            conflicts += set_cursor(tables["_pipeline_cursors"], source_name, window.end, summary.run_id, utc_now(),
                                    ice.commit_retries)
        summary.status = "success"
    except Exception as exc:
        summary.status = "failed"
        summary.error = str(exc)
        raise
    finally:
        src.close()
        summary.pages = src.stats.pages
        summary.api_calls = src.http.stats.api_calls
        summary.retries = src.http.stats.retries
        summary.extra = dict(src.stats.extra, scanned=src.stats.scanned, commit_conflicts=conflicts)
        summary.duration_s = round(time.monotonic() - started, 3)
        try:
            record_run(tables["_pipeline_runs"], {
                "run_id": summary.run_id, "source_name": source_name, "mode": mode, "window_start": window.start,
                "window_end": window.end, "started_at": now, "finished_at": utc_now(), "status": summary.status,
                "invoices_extracted": summary.invoices_extracted, "invoices_loaded": summary.invoices_loaded,
                "invoices_stale": summary.invoices_stale, "quarantined": summary.quarantined, "pages": summary.pages,
                "api_calls": summary.api_calls, "error": summary.error}, ice.commit_retries)
        except Exception:  # the run's own outcome matters more than its log row
            log.exception("could not record run %s", summary.run_id)
    log.info("source '%s': run %s %s: %d invoices extracted, %d loaded, %d stale, %d quarantined, "
             "%d commit conflicts retried, in %.1fs", source_name, summary.run_id, summary.status,
             summary.invoices_extracted, summary.invoices_loaded, summary.invoices_stale, summary.quarantined,
             conflicts, summary.duration_s)
    return summary
