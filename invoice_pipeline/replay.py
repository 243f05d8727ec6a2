"""Rebuild a source's tables and its share of the conformed model from the kept raw payloads alone.

No API call is made: this is how a mapping fix or a flattening change is applied to history, and
the proof that the raw store is complete. The source's rows are cleared, then the newest payload of
every invoice is loaded through pipeline.load_records (merge, quarantine, run log, history step).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from invoice_pipeline import jsonio  # exact numbers, as the load parsed them
from invoice_pipeline.config import AppConfig
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.pipeline import RunSummary, load_records
from invoice_pipeline.sources.base import Source, SourceRecord
from invoice_pipeline.warehouse import Warehouse, quote

log = logging.getLogger("invoice_pipeline.replay")
BATCH = 1000


def replay_source(
    app: AppConfig, source_name: str, warehouse: Warehouse | None = None, source: Source | None = None
) -> RunSummary:
    wh = warehouse or Warehouse(app.warehouse)
    # One connection for the whole replay: the payload reads between batches and the load's writes
    # share it, instead of waiting for each other's writer turn.
    with wh.session():
        try:
            total = _clear(wh, source_name)
        except BaseException:
            if source is not None:
                source.close()
            raise
        log.info("source '%s': replaying %d invoices from raw payloads", source_name, total)
        try:
            # observed=False: the history step restores the deletion marks the rebuild cleared. Recorded
            # as a run: the history step skips rows of runs whose history is recorded (success).
            summary = load_records(app, source_name, lambda src: _raw_batches(wh, src, total), mode="replay",
                                   warehouse=wh, source=source, observed=False)
        finally:
            with wh.writer() as con:
                con.execute(f"DROP TABLE IF EXISTS {quote(source_name)}._replay_ids")
    log.info("source '%s': replay rebuilt %d invoices (%d quarantined) in %.1fs", source_name,
             summary.invoices_loaded, summary.quarantined, summary.duration_s)
    return summary


def _clear(wh: Warehouse, source_name: str) -> int:
    """Pick the payload to replay of every invoice, then empty the source's tables and its rows of the
    conformed model (one transaction); returns how many invoices will be replayed."""
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
    return total


def _raw_batches(wh: Warehouse, source: Source, total: int) -> Iterator[list[SourceRecord]]:
    """The chosen payloads, BATCH at a time, as records of the source."""
    s = quote(source.name)
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
        yield records
