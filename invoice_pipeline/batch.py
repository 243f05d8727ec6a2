"""One batch of raw invoices made ready to write: deduplicated, mapped to the conformed model
(quarantining what cannot be), flattened, as Arrow tables. No database access (and no DuckDB
import): this runs in the preparing processes too (preparing.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

import pyarrow as pa

from invoice_pipeline.conformed import finalize as finalize_conformed
from invoice_pipeline.conformed import to_arrow
from invoice_pipeline.flatten import TableBuffer, flatten_record
from invoice_pipeline.jsonio import ascii_text, dumps, unstorable_reason
from invoice_pipeline.model import CONFORMED, KEYS_SCHEMA, QUARANTINE_SCHEMA, RAW_SCHEMA, TS, LoadBatch, SourceRecord
from invoice_pipeline.sources.base import Source

__all__ = ["GC_FIRST_THRESHOLD", "KEYS_SCHEMA", "QUARANTINE_SCHEMA", "RAW_SCHEMA", "LoadBatch", "prepare_batch"]

# CPython's first GC threshold while preparing batches (default 700): preparing allocates millions of
# short-lived, acyclic containers, and each pass re-scans a heap of parsed payloads.
GC_FIRST_THRESHOLD = 50_000


def _payload_json(payload: dict) -> str:
    try:
        return dumps(payload, sort_keys=True).decode()
    except TypeError:  # nested too deep, a lone surrogate: kept as escaped text
        return ascii_text(payload)


def _unidentified(source: Source, rec: SourceRecord, what: str) -> str:
    """The quarantine reason of a record without key or version, with identify()'s own cause."""
    try:
        source.identify(rec.payload)
    except Exception as exc:  # the cause a person needs to fix the record
        return f"{what}: {exc}" if exc.__class__.__name__ == "MappingError" else f"{what}: {type(exc).__name__}: {exc}"
    return what


def prepare_batch(
    source: Source, records: Iterable[SourceRecord], run_id: str, loaded_at: datetime, start_date: datetime | None = None
) -> tuple[LoadBatch, int]:
    """Dedupe, map (quarantining what cannot be mapped), flatten; no database access.

    Returns the batch and the number of records dropped for being older than start_date.
    """
    newest: dict[str, SourceRecord] = {}
    quarantine: list[tuple[str | None, str, str]] = []
    before_start = 0
    for rec in records:
        if not rec.invoice_id:
            quarantine.append((None, _unidentified(source, rec, "record has no invoice key"), _payload_json(rec.payload)))
            continue
        if start_date is not None and rec.last_modified_at is not None and rec.last_modified_at < start_date:
            before_start += 1
            continue
        prev = newest.get(rec.invoice_id)
        if prev is None or (rec.last_modified_at or loaded_at) >= (prev.last_modified_at or loaded_at):
            newest[rec.invoice_id] = rec

    flat: dict[str, TableBuffer] = {}
    conformed: dict[str, list[dict]] = {table: [] for table in CONFORMED}
    keys_id, keys_lm = [], []
    raw_ids: list[str] = []
    raw_lm: list[datetime | None] = []
    raw_sha: list[str] = []
    raw_text: list[bytes] = []  # UTF-8 JSON: Arrow takes it as is for a string column, no str() needed
    for invoice_id, rec in newest.items():
        try:
            payload_json = dumps(rec.payload, sort_keys=True)  # _payload_json() before decode()
        except TypeError as exc:  # valid JSON that JSON text cannot hold back (see jsonio): this record only
            key = invoice_id.encode("utf-8", "backslashreplace").decode()  # the key itself may hold the surrogate
            quarantine.append((key, f"payload cannot be stored: it {unstorable_reason(exc)}", ascii_text(rec.payload)))
            continue
        raw_ids.append(invoice_id)
        raw_lm.append(rec.last_modified_at)
        raw_sha.append(hashlib.sha256(payload_json).hexdigest())
        raw_text.append(payload_json)
        if rec.last_modified_at is None:
            quarantine.append(
                (invoice_id, _unidentified(source, rec, "record has no last-modified time"), payload_json.decode()))
            continue
        try:
            mapped = finalize_conformed(source.to_conformed(rec.payload), derive_installment=not source.has_installments)
        except Exception as exc:  # any mapping failure quarantines this record, never the run
            reason = str(exc) if exc.__class__.__name__ == "MappingError" else f"{type(exc).__name__}: {exc}"
            quarantine.append((invoice_id, reason, payload_json.decode()))
            continue
        inv = mapped.invoice
        inv["_loaded_at"], inv["_run_id"] = loaded_at, run_id
        conformed["invoices"].append(inv)
        for table, rows in (("invoice_lines", mapped.lines), ("invoice_tax_lines", mapped.tax_lines),
                            ("invoice_installments", mapped.installments)):
            for row in rows:
                row["source_name"], row["invoice_id"] = source.name, invoice_id
            conformed[table].extend(rows)
        flatten_record(invoice_id, rec.payload, flat, {"_last_modified_at": rec.last_modified_at, "_loaded_at": loaded_at, "_run_id": run_id})
        keys_id.append(invoice_id)
        keys_lm.append(rec.last_modified_at)

    batch = LoadBatch(
        source_name=source.name,
        run_id=run_id,
        loaded_at=loaded_at,
        keys=pa.table({"invoice_id": keys_id, "last_modified_at": pa.array(keys_lm, TS)}, schema=KEYS_SCHEMA),
        flat={path: buffer.to_arrow() for path, buffer in flat.items()},
        conformed={t: to_arrow(t, rows, checked=True) for t, rows in conformed.items()},  # finalize checked them
        # column by column: from_pylist of one dict per payload costs several times as much
        raw=pa.Table.from_arrays(
            [pa.array(raw_ids, pa.string()), pa.array(raw_lm, TS), pa.array(raw_sha, pa.string()),
             pa.array(raw_text, pa.string()), pa.array([run_id] * len(raw_ids), pa.string()),
             pa.array([loaded_at] * len(raw_ids), TS)],
            schema=RAW_SCHEMA),
        quarantine=pa.Table.from_pylist(
            [{"invoice_id": i, "reason": r, "payload": p, "run_id": run_id, "detected_at": loaded_at} for i, r, p in quarantine],
            schema=QUARANTINE_SCHEMA),
    )
    return batch, before_start
