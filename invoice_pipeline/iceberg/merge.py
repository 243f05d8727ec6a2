"""Merging a prepared batch into the Iceberg tables with optimistic commits (no lock).

Every table merges on its own, by the same rule as the DuckDB backend: a key's rows are replaced
only by a version at least as new as the stored one, as a set (delete the key's rows + append the
new ones in ONE pyiceberg transaction, so no reader and no other writer ever sees half of it). The
stored versions are read from the very snapshot the transaction starts from; if another writer
committed in between, pyiceberg's commit fails (CommitFailedException) and the merge starts over
from a fresh read, so the rule holds with any number of concurrent writers on any machines.

pyiceberg cannot commit several tables in one transaction, so a batch lands table by table, the
invoices (the key's version) last, then the cursor: a run killed in between leaves its cursor where
it was, and since each table holds the version it was written with (children carry their invoice's
_last_modified_at), a re-run replaces the half-written keys (same version: accepted) and the
audit (publish.py) refuses to publish while a child table's version differs from its invoice's.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from invoice_pipeline.model import LoadBatch
from invoice_pipeline.flatten import scalar_text
from invoice_pipeline.jsonio import loads
from invoice_pipeline.iceberg.catalog import CHILD_TABLES, CURSORS_SCHEMA, INGEST, RUNS_SCHEMA, VERSION, conformed_schema
from invoice_pipeline.testpoints import pause_point

log = logging.getLogger("invoice_pipeline.iceberg")


@dataclass
class MergeResult:
    accepted: int = 0
    stale: int = 0
    conflicts: int = 0  # commits retried because another writer committed first
    rows_written: dict[str, int] = field(default_factory=dict)


class CommitConflictError(RuntimeError):
    """Too many concurrent commits in a row: the batch is not written (nothing half-done in this table)."""


def with_retries(what: str, attempt: Callable[[], int | None], retries: int) -> int:
    """Run attempt() (which re-reads the table) until its commit succeeds; returns the conflicts seen."""
    for conflicts in range(retries + 1):
        try:
            attempt()
            return conflicts
        except CommitFailedException:
            if conflicts == retries:
                break
            # jittered backoff: writers that collided do not collide again in lock-step
            time.sleep(min(2.0, 0.05 * 2 ** min(conflicts, 6)) * random.uniform(0.5, 1.5))
            log.debug("%s: commit conflict %d, re-reading and retrying", what, conflicts + 1)
    raise CommitConflictError(f"{what}: gave up after {retries + 1} commit conflicts with other writers "
                              "(raise warehouse.iceberg.commit_retries, or load fewer sources at once)")


def _scan_ref(table: Table, row_filter: BooleanExpression, columns: tuple[str, ...]) -> pa.Table:
    """Rows of the INGEST branch (empty before its first commit)."""
    if INGEST not in table.metadata.refs:
        return schema_to_pyarrow(table.schema()).empty_table().select(list(columns))
    return table.scan(row_filter=row_filter, selected_fields=columns).use_ref(INGEST).to_arrow()


def _source_filter(source: str | None) -> BooleanExpression:
    return EqualTo("source_name", source) if source is not None else AlwaysTrue()


def merge_versioned(table: Table, rows: pa.Table, keys: pa.Table, *, source: str | None, key: str, version: str,
                    retries: int, result: MergeResult | None = None) -> tuple[int, int]:
    """Replace, as a set, the rows of every key of `keys` whose version is at least the stored one.

    keys: (key, version) of the batch (one row per key). Returns (accepted, stale) key counts.
    """
    ids = keys.column(0).to_pylist()
    if not ids:
        return 0, 0
    outcome = [0, 0]

    def attempt() -> None:
        table.refresh()
        base = _source_filter(source)
        stored = _scan_ref(table, And(base, In(key, ids)) if source else In(key, ids), (key, version))
        newest = {}
        if stored.num_rows:
            grouped = stored.group_by(key).aggregate([(version, "max")])
            newest = dict(zip(grouped.column(key).to_pylist(), grouped.column(f"{version}_max").to_pylist(), strict=True))
        batch_versions = dict(zip(ids, keys.column(1).to_pylist(), strict=True))
        accepted = [k for k, v in batch_versions.items()
                    if k not in newest or v is None or newest[k] is None or v >= newest[k]]
        replaced = [k for k in accepted if k in newest]
        keep = pc.is_in(rows.column(key), value_set=pa.array(accepted, pa.string())) if len(accepted) < len(ids) else None
        new_rows = rows.filter(keep) if keep is not None else rows
        if replaced or new_rows.num_rows:
            with table.transaction() as tx:
                if replaced:
                    tx.delete(And(base, In(key, replaced)) if source else In(key, replaced), branch=INGEST)
                if new_rows.num_rows:
                    tx.append(new_rows, branch=INGEST)
        outcome[:] = [len(accepted), len(ids) - len(accepted)]

    conflicts = with_retries(f"table {'.'.join(table.name())}", attempt, retries)
    if result is not None:
        result.conflicts += conflicts
        result.rows_written[".".join(table.name())] = rows.num_rows
    return outcome[0], outcome[1]


def append_new(table: Table, rows: pa.Table, *, match: tuple[str, ...], retries: int) -> int:
    """Append rows whose `match` columns are not stored yet (a re-run adds nothing); returns conflicts."""
    if not rows.num_rows:
        return 0

    def attempt() -> None:
        table.refresh()
        ids = rows.column(match[0]).unique()
        stored = _scan_ref(table, In(match[0], ids.to_pylist()), match)
        seen = set(zip(*(stored.column(c).to_pylist() for c in match), strict=True))
        keep = [tuple(r) not in seen for r in zip(*(rows.column(c).to_pylist() for c in match), strict=True)]
        new = rows.filter(pa.array(keep)) if not all(keep) else rows
        if new.num_rows:
            table.append(new, branch=INGEST)

    return with_retries(f"table {'.'.join(table.name())}", attempt, retries)


def append_rows(table: Table, rows: pa.Table, *, retries: int, branch: str = INGEST) -> int:
    if not rows.num_rows:
        return 0
    return with_retries(f"table {'.'.join(table.name())}", lambda: (table.refresh(), table.append(rows, branch=branch)),
                        retries)


def with_version(rows: pa.Table, keys: pa.Table, table: str) -> pa.Table:
    """Child rows with their invoice's version (VERSION), in the column order of the Iceberg table."""
    versions = dict(zip(keys.column(0).to_pylist(), keys.column(1).to_pylist(), strict=True))
    column = pa.array([versions.get(i) for i in rows.column("invoice_id").to_pylist()], pa.timestamp("us", tz="UTC"))
    return rows.append_column(VERSION, column).select(conformed_schema(table).names).cast(conformed_schema(table))


def write_batch(tables: dict[str, Table], source_tables: dict[str, Table], batch: LoadBatch, retries: int,
                write_flat: Callable[[LoadBatch, MergeResult], None] | None = None) -> MergeResult:
    """The batch into every table, the invoices (the version readers go by) last; see the module doc.
    write_flat: the source's flattened tables (flat.py), merged after the raw payloads."""
    result = MergeResult()
    src = batch.source_name
    result.conflicts += append_new(source_tables["_raw_invoices"], batch.raw, match=("invoice_id", "payload_sha256"),
                                   retries=retries)
    result.conflicts += append_rows(source_tables["_quarantine"], batch.quarantine, retries=retries)
    if write_flat is not None:
        write_flat(batch, result)
    pause_point("iceberg_flat_written")  # tests kill a run here: flattened tables committed, conformed not
    keys = batch.keys
    for table in CHILD_TABLES:
        rows = with_version(batch.conformed[table], keys, table)
        merge_versioned(tables[table], rows, keys, source=src, key="invoice_id", version=VERSION, retries=retries,
                        result=result)
    pause_point("iceberg_children_written")  # tests kill a run here: children committed, invoices not
    invoices = batch.conformed["invoices"].cast(conformed_schema("invoices"))
    result.accepted, result.stale = merge_versioned(
        tables["invoices"], invoices, keys, source=src, key="invoice_id", version="last_modified_at",
        retries=retries, result=result)
    return result


def set_cursor(table: Table, source: str, cursor: datetime, run_id: str, now: datetime, retries: int) -> int:
    """The source's one cursor row, replaced in one transaction (on `main`: run state is not audited)."""
    row = pa.Table.from_pylist([{"source_name": source, "cursor_at": cursor, "run_id": run_id, "updated_at": now}],
                               schema=CURSORS_SCHEMA)

    def attempt() -> None:
        table.refresh()
        with table.transaction() as tx:
            if read_cursor(table, source, refresh=False) is not None:
                tx.delete(EqualTo("source_name", source))
            tx.append(row)

    return with_retries(f"cursor of source '{source}'", attempt, retries)


def read_cursor(table: Table, source: str, refresh: bool = True) -> datetime | None:
    if refresh:
        table.refresh()
    if table.current_snapshot() is None:
        return None
    rows = table.scan(row_filter=EqualTo("source_name", source), selected_fields=("cursor_at",)).to_arrow()
    values = [v for v in rows.column("cursor_at").to_pylist() if v is not None]
    return max(values) if values else None


def record_run(table: Table, row: dict, retries: int) -> None:
    append_rows(table, pa.Table.from_pylist([row], schema=RUNS_SCHEMA), retries=retries, branch="main")


def stored_fields(invoices: Table, raw: Table, source: str, ids: list[str], fields: list[str]) -> dict[str, dict]:
    """Source.stored_fields for Iceberg: top-level fields of the stored (current) version of these
    invoices, as text like the DuckDB backend's flattened columns (flatten.scalar_text).

    The current version is the one main.invoices holds (committed last in a batch), and its payload
    the raw payload of exactly that version: a raw payload of a batch killed before its invoices
    committed must not make the source think the new version is already loaded.
    """
    if not ids:
        return {}
    current = _scan_ref(invoices, And(EqualTo("source_name", source), In("invoice_id", list(ids))),
                        ("invoice_id", "last_modified_at"))
    versions = dict(zip(current.column("invoice_id").to_pylist(), current.column("last_modified_at").to_pylist(),
                        strict=True))
    if not versions:
        return {}
    rows = _scan_ref(raw, In("invoice_id", list(versions)), ("invoice_id", "last_modified_at", "payload", "extracted_at"))
    chosen: dict[str, tuple] = {}
    for invoice_id, modified, payload, extracted in zip(*(rows.column(c).to_pylist() for c in rows.column_names),
                                                        strict=True):
        if modified == versions.get(invoice_id) and (invoice_id not in chosen or extracted >= chosen[invoice_id][0]):
            chosen[invoice_id] = (extracted, payload)
    out = {}
    for invoice_id, (_, payload) in chosen.items():
        try:
            data = loads(payload)
        except ValueError:  # an unstorable payload kept as escaped text: compare nothing, fetch it again
            continue
        if isinstance(data, dict):
            out[invoice_id] = {f: scalar_text(data.get(f)) for f in fields}
    return out
