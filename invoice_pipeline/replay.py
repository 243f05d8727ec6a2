"""Rebuild a source's tables and its share of the conformed model from the kept raw payloads alone.

No API call is made: this is how a mapping fix or a flattening change is applied to history, and
the proof that the raw store is complete.
"""

from __future__ import annotations

import logging
import time
import uuid


from invoice_pipeline import jsonio  # exact numbers, as the load parsed them
from invoice_pipeline.config import AppConfig
from invoice_pipeline.history import record_history
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.batch import prepare_batch
from invoice_pipeline.pipeline import RunSummary, build_source, record_run
from invoice_pipeline.sources.base import Source, SourceRecord
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse, quote

log = logging.getLogger("invoice_pipeline.replay")
BATCH = 1000


def replay_source(
    app: AppConfig, source_name: str, warehouse: Warehouse | None = None, source: Source | None = None
) -> RunSummary:
    wh = warehouse or Warehouse(app.warehouse)
    config = app.sources[source_name]
    source = source or build_source(app, source_name)
    started, now = time.monotonic(), utc_now().replace(microsecond=0)
    summary = RunSummary(source_name, config.type, uuid.uuid4().hex[:12], "replay", config.start_date, now, now)
    s = quote(source_name)
    with wh.writer() as con:
        wh.ensure_main(con)
        wh.ensure_source(con, source_name)
        # The newest payload of every invoice (ties: the one received last).
        con.execute(
            f"""CREATE OR REPLACE TABLE {s}._replay_ids AS
            SELECT invoice_id, payload_sha256, row_number() OVER (ORDER BY invoice_id) AS n FROM (
              SELECT invoice_id, payload_sha256, row_number() OVER (
                PARTITION BY invoice_id ORDER BY last_modified_at DESC NULLS LAST, extracted_at DESC, rowid DESC) AS rn
              FROM {s}._raw_invoices) WHERE rn = 1"""
        )
        total = con.execute(f"SELECT count(*) FROM {s}._replay_ids").fetchone()[0]
        con.execute("BEGIN TRANSACTION")
        for name in wh.source_tables(con, source_name).values():
            con.execute(f"DELETE FROM {s}.{quote(name)}")
        # keyless records never reach _raw_invoices: their quarantine row is their only copy
        con.execute(f"DELETE FROM {s}._quarantine WHERE invoice_id IS NOT NULL")
        for table in CONFORMED_TABLES:
            con.execute(f"DELETE FROM main.{table} WHERE source_name = ?", [source_name])
        con.execute("COMMIT")
    log.info("source '%s': replaying %d invoices from raw payloads", source_name, total)
    try:
        for offset in range(0, total, BATCH):
            with wh.writer() as con:
                payloads = con.execute(
                    f"""SELECT r.payload FROM {s}._replay_ids i JOIN {s}._raw_invoices r
                        USING (invoice_id, payload_sha256) WHERE i.n > ? AND i.n <= ? ORDER BY i.n""",
                    [offset, offset + BATCH],
                ).fetchall()
            records = []
            for (text,) in payloads:
                payload = jsonio.loads(text)
                try:
                    records.append(source.identify(payload))
                except Exception:  # re-quarantined by prepare_batch as a record without key
                    records.append(SourceRecord("", None, payload))
            batch, _ = prepare_batch(source, records, summary.run_id, now)
            with wh.writer() as con:
                result = wh.write_batch(con, batch)
            summary.invoices_extracted += len(records)
            summary.invoices_loaded += result.accepted
            summary.quarantined += batch.quarantine.num_rows
        record_history(wh, source_name)  # restores deletion marks the rebuild cleared
        summary.status = "success"
    except Exception as exc:
        summary.status, summary.error = "failed", str(exc)
        raise
    finally:
        with wh.writer() as con:
            con.execute(f"DROP TABLE IF EXISTS {s}._replay_ids")
        source.close()
        summary.duration_s = round(time.monotonic() - started, 3)
        # Recorded as a run: the history step skips rows of runs whose history is recorded (success).
        record_run(wh, summary)
    log.info("source '%s': replay rebuilt %d invoices (%d quarantined) in %.1fs", source_name,
             summary.invoices_loaded, summary.quarantined, summary.duration_s)
    return summary
