"""The DuckDB warehouse: connections under a cross-process writer lock, schemas, idempotent merges.

Merge rule (SPEC 3): an invoice is replaced only by a version at least as new as the stored one,
and its child rows (in every flattened table and every conformed table) are replaced as a set.
Each batch commits in one transaction; the cursor moves only in the transaction of the last batch,
so a failed or killed run leaves it where it was and a re-run merges the same rows again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from filelock import FileLock

from invoice_pipeline.batch import LoadBatch
from invoice_pipeline.config import WarehouseConfig
from invoice_pipeline.conformed import CONFORMED_TABLES
from invoice_pipeline.sql import quote, rollback, sql_literal
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.views import create_analyst_views
from invoice_pipeline.writer_lock import acquire_writer_lock
from invoice_pipeline.audit import create_exceptions_view
from invoice_pipeline.flatten import CHILD_META, FIELD, ROOT_META, ROOT_TABLE, Naming, readable
from invoice_pipeline.jsonio import dumps

log = logging.getLogger("invoice_pipeline.warehouse")

INTERNAL_TABLES = ("_raw_invoices", "_quarantine", "_tables", "_columns")
# Field columns one flattened table may have; fields beyond are kept, as one JSON object per row, in
# its OVERFLOW column (registered in _columns under the path OVERFLOW, which no JSON path can be).
MAX_COLUMNS_PER_TABLE = 1000
OVERFLOW = "_overflow"
# New columns added per schema transaction: DuckDB keeps a version of the table per ALTER until the
# transaction ends, so one transaction of n ALTERs costs memory ~n^2 (1,500 columns: 850 MB).
COLUMNS_PER_SCHEMA_TRANSACTION = 50


@dataclass
class BatchResult:
    accepted: int = 0
    stale: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)


class Warehouse:
    def __init__(self, config: WarehouseConfig):
        self.config = config
        self.path = Path(config.duckdb_path)
        self.lock_timeout = config.lock_timeout.total_seconds()
        # Per source: registry row counts and the names they map to (see _registry).
        self._registries: dict[str, _Registry] = {}
        self.max_columns_per_table = MAX_COLUMNS_PER_TABLE

    # -- connections -------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The only way to write: one writer at a time across processes (DuckDB's own lock fails fast)."""
        shared = _SESSIONS.get(self.path.resolve())
        if shared is not None:
            with shared.connection(threads=None) as con:
                yield con
            return
        lock = self._acquire()
        try:
            con = self._connect()
            try:
                yield con
            finally:
                con.close()
        finally:
            lock.release()

    def turns(self) -> WriterTurns | SessionTurns:
        """One connection for a run's many batches, handed over to other writers every so often."""
        shared = _SESSIONS.get(self.path.resolve())
        return SessionTurns(shared) if shared is not None else WriterTurns(self)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Within it, every writer() and turns() of this process on this file share one connection.

        Why: opening the file costs ~15 ms (catalog, WAL) and a run's steps open it ~20 times; a
        no-op run spent a quarter of its own work connecting. The shared connection still follows
        the writer turns (released after IDLE_SECONDS without a write, or after writer_turn_seconds),
        so other processes get the file as before. Nested sessions use the outermost one.
        """
        key = self.path.resolve()
        if key in _SESSIONS:
            yield
            return
        shared = _SESSIONS[key] = WriterTurns(self)
        try:
            yield
        finally:
            del _SESSIONS[key]
            shared.close()

    def _acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return acquire_writer_lock(self.path, self.lock_timeout)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        # Checkpoints are what a write pays most for, and DuckDB's cost per checkpoint grows with the
        # table (at 200k invoices some took 2-7 s of CPU): checkpoint when a turn ends (at most
        # writer_turn_seconds of writes in the WAL), never in between (a 256MB threshold
        # checkpointed every ~40 batches too: 94 -> 82 s for 200k invoices without it).
        con = duckdb.connect(str(self.path), config={"memory_limit": self.config.memory_limit,
                                                     "checkpoint_threshold": "4GB"})
        con.execute("SET TimeZone = 'UTC'")
        return con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read access for the pipeline's own checks (taken under the writer lock, see FACTS.md)."""
        with self.writer() as con:
            yield con

    # -- schema ------------------------------------------------------------------------------
    def ensure_main(self, con: duckdb.DuckDBPyConnection) -> None:
        """The conformed tables, views, comments and run tables of this release; a no-op (one
        query) when the database already has them: this runs at the start of every step."""
        key = _main_schema_key()
        try:
            stored = con.execute("SELECT schema_key FROM main._pipeline_schema").fetchone()
        except duckdb.CatalogException:
            stored = None
        if stored is not None and stored[0] == key:
            return
        for table, columns in CONFORMED_TABLES.items():
            cols = ", ".join(f"{quote(c)} {t}" for c, (t, _) in columns.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS main.{table} ({cols})")
            existing = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                "AND table_schema='main' AND table_name=?", [table]
            ).fetchall()}
            for c, (t, _) in columns.items():
                if c not in existing:  # a column added in a later release of the pipeline
                    con.execute(f"ALTER TABLE main.{table} ADD COLUMN {quote(c)} {t}")
        apply_comments(con)
        create_analyst_views(con)
        create_exceptions_view(con)
        con.execute(
            "CREATE TABLE IF NOT EXISTS main._pipeline_cursors (source_name VARCHAR PRIMARY KEY, "
            "cursor_at TIMESTAMPTZ NOT NULL, run_id VARCHAR, updated_at TIMESTAMPTZ)"
        )
        con.execute(
            "CREATE TABLE IF NOT EXISTS main._pipeline_runs (run_id VARCHAR, source_name VARCHAR, mode VARCHAR, "
            "window_start TIMESTAMPTZ, window_end TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, "
            "status VARCHAR, invoices_extracted BIGINT, invoices_loaded BIGINT, invoices_stale BIGINT, "
            "quarantined BIGINT, pages BIGINT, api_calls BIGINT, error VARCHAR)"
        )
        # Rows an earlier release wrote get this release's new columns filled (upgrade.py), before
        # the key is stored: a run killed half-way upgrades the rest next time.
        from invoice_pipeline.upgrade import upgrade_conformed

        upgrade_conformed(con)
        con.execute("CREATE OR REPLACE TABLE main._pipeline_schema AS SELECT ?::VARCHAR AS schema_key", [key])

    def ensure_source(self, con: duckdb.DuckDBPyConnection, source: str) -> None:
        s = quote(source)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {s}._tables (table_path VARCHAR, table_name VARCHAR)")
        con.execute(f"CREATE TABLE IF NOT EXISTS {s}._columns (table_name VARCHAR, field_path VARCHAR, column_name VARCHAR)")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {s}._raw_invoices (invoice_id VARCHAR, last_modified_at TIMESTAMPTZ, "
            "payload_sha256 VARCHAR, payload VARCHAR, run_id VARCHAR, extracted_at TIMESTAMPTZ)"
        )
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {s}._quarantine (invoice_id VARCHAR, reason VARCHAR, payload VARCHAR, "
            "run_id VARCHAR, detected_at TIMESTAMPTZ)"
        )
        meta = ", ".join(f"{quote(c)} {t}" for c, t in _ROOT_META_TYPES.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {s}.{quote(ROOT_TABLE)} ({meta})")

    def source_tables(self, con: duckdb.DuckDBPyConnection, source: str) -> dict[str, str]:
        """table path -> table name of every flattened table of a source (root included)."""
        rows = con.execute(f"SELECT table_path, table_name FROM {quote(source)}._tables").fetchall()
        return {ROOT_TABLE: ROOT_TABLE, **dict(rows)}

    # -- cursor ------------------------------------------------------------------------------
    def cursor(self, con: duckdb.DuckDBPyConnection, source: str) -> datetime | None:
        row = con.execute("SELECT cursor_at FROM main._pipeline_cursors WHERE source_name = ?", [source]).fetchone()
        return row[0] if row else None

    # -- merge -------------------------------------------------------------------------------
    def write_batch(self, con: duckdb.DuckDBPyConnection, batch: LoadBatch) -> BatchResult:
        """One transaction: evolve the schema, replace accepted invoices everywhere, keep raw payloads.

        Cost is bounded by the batch, not by the warehouse: child rows are deleted only when an
        accepted invoice is already stored (never on a first load, whose deletes would each scan
        a whole table), and the name registry is re-read only when another writer changed it.
        """
        src = batch.source_name
        s = quote(src)
        result = BatchResult()
        # The schema first, in transactions of its own (memory stays flat however many columns are
        # new); names and columns it adds are harmless if the data transaction then fails.
        registry = self._registry(con, src)
        try:
            tables, columns = self._evolve(con, src, batch.flat, registry)
        except BaseException:
            self._registries.pop(src, None)  # re-read what was committed
            raise
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("_stage_keys", batch.keys)
            # Versions at least as new as the stored one win; an older one (a backfill, an
            # overlapping window) is skipped, never written over newer data.
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _accepted AS
                SELECT k.invoice_id, t._invoice_id IS NOT NULL AS stored
                FROM _stage_keys k LEFT JOIN {s}.{quote(ROOT_TABLE)} t ON t._invoice_id = k.invoice_id
                WHERE t._invoice_id IS NULL OR k.last_modified_at IS NULL OR t._last_modified_at IS NULL
                   OR k.last_modified_at >= t._last_modified_at"""
            )
            result.accepted, stored = con.execute("SELECT count(*), count(*) FILTER (stored) FROM _accepted").fetchall()[0]
            result.stale = batch.keys.num_rows - result.accepted
            accepted = "(SELECT invoice_id FROM _accepted)"
            # Rows of the batch whose invoice is not accepted (stale) are filtered out on insert.
            only_accepted = "" if result.stale == 0 else f" WHERE _invoice_id IN {accepted}"
            if stored:  # every flattened row of an invoice is written with its root row
                for table_name in tables.values():
                    con.execute(f"DELETE FROM {s}.{quote(table_name)} WHERE _invoice_id IN {accepted}")
            for path, rows in batch.flat.items():
                name = tables[path]
                names = columns[path]
                rows = _fold_overflow(rows, names)
                con.register("_stage_rows", rows.rename_columns([names.get(c, c) for c in rows.column_names]))
                con.execute(f"INSERT INTO {s}.{quote(name)} BY NAME SELECT * FROM _stage_rows{only_accepted}")
                con.unregister("_stage_rows")
                result.rows_written[name] = rows.num_rows
            conformed_stored = con.execute(
                f"SELECT count(*) FROM main.invoices WHERE source_name = ? AND invoice_id IN {accepted}", [src]
            ).fetchall()[0][0]
            conformed_filter = "" if result.stale == 0 else f" WHERE invoice_id IN {accepted}"
            for table, arrow in batch.conformed.items():
                if conformed_stored:  # conformed child rows are written with their invoice row
                    con.execute(
                        f"DELETE FROM main.{table} WHERE source_name = ? AND invoice_id IN {accepted}", [src]
                    )
                if not arrow.num_rows:
                    continue
                con.register("_stage_conformed", arrow)
                con.execute(f"INSERT INTO main.{table} BY NAME SELECT * FROM _stage_conformed{conformed_filter}")
                con.unregister("_stage_conformed")
            if batch.raw.num_rows:
                con.register("_stage_raw", batch.raw)
                # Every distinct payload is kept once: a re-run adds nothing, a changed invoice adds a version.
                con.execute(
                    f"""INSERT INTO {s}._raw_invoices SELECT r.* FROM _stage_raw r WHERE NOT EXISTS (
                        SELECT 1 FROM {s}._raw_invoices x WHERE x.invoice_id = r.invoice_id AND x.payload_sha256 = r.payload_sha256)"""
                )
                con.unregister("_stage_raw")
            if batch.quarantine.num_rows:
                con.register("_stage_quarantine", batch.quarantine)
                con.execute(f"INSERT INTO {s}._quarantine SELECT * FROM _stage_quarantine")
                con.unregister("_stage_quarantine")
            if batch.cursor is not None:
                con.execute(
                    "INSERT OR REPLACE INTO main._pipeline_cursors VALUES (?, ?, ?, ?)",
                    [src, batch.cursor, batch.run_id, batch.loaded_at],
                )
            con.unregister("_stage_keys")
            pause_point("batch_write")  # tests kill a run here: a transaction written, not committed
            con.execute("COMMIT")
        except BaseException:
            self._registries.pop(src, None)  # names added in this transaction were rolled back
            rollback(con)
            raise
        registry.tables_count, registry.columns_count = registry.pending_counts
        return result

    def _registry(self, con: duckdb.DuckDBPyConnection, src: str) -> _Registry:
        """The source's name registry, re-read only when its row counts moved (another writer).

        _tables and _columns are append-only, so equal counts mean the cached names are current.
        """
        s = quote(src)
        counts = con.execute(f"SELECT (SELECT count(*) FROM {s}._tables), (SELECT count(*) FROM {s}._columns)").fetchall()[0]
        registry = self._registries.get(src)
        if registry is None or (registry.tables_count, registry.columns_count) != counts:
            tables = {ROOT_TABLE: ROOT_TABLE, **dict(con.execute(f"SELECT table_path, table_name FROM {s}._tables").fetchall())}
            columns: dict[str, dict[str, str]] = {}
            for table, path, name in con.execute(f"SELECT table_name, field_path, column_name FROM {s}._columns").fetchall():
                columns.setdefault(table, {})[path] = name
            registry = self._registries[src] = _Registry(counts[0], counts[1], tables, columns)
        registry.pending_counts = counts
        return registry

    def _evolve(
        self, con: duckdb.DuckDBPyConnection, src: str, flat: dict[str, pa.Table], registry: _Registry
    ) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """Create tables and add columns for paths never seen before, committed before the batch's data.

        Returns table path -> name and, per table path, field path -> column name (a field beyond
        the table's column cap maps to OVERFLOW). A new table is created with all its columns in
        one statement; new columns of an existing table are added COLUMNS_PER_SCHEMA_TRANSACTION
        per transaction (see there why).
        """
        s = quote(src)
        known = registry.tables
        new_tables = Naming(dict(known), reserved=INTERNAL_TABLES).assign(p for p in flat if p not in known)
        columns: dict[str, dict[str, str]] = {}
        for path, rows in flat.items():
            table = known.get(path) or new_tables[path]
            fields = [c for c in rows.column_names if c.startswith(FIELD)]
            assigned = registry.columns.get(table, {})
            new = [p for p in fields if p not in assigned]
            if not new and path in known:
                columns[path] = assigned
                continue
            names = self._assign_columns(src, table, assigned, new)
            added = {p: n for p, n in names.items() if p not in assigned}
            if path not in known:  # one CREATE with every column: no ALTERs at all
                meta = [f"{quote(c)} {t}" for c, t in _CHILD_META_TYPES.items()]
                cols = ", ".join(meta + [f"{quote(n)} VARCHAR" for n in dict.fromkeys(added.values())])
                with _transaction(con):
                    con.execute(f"INSERT INTO {s}._tables VALUES (?, ?)", [path, table])
                    con.execute(f"CREATE TABLE {s}.{quote(table)} ({cols})")
                    if added:
                        con.executemany(f"INSERT INTO {s}._columns VALUES (?, ?, ?)", [[table, p, n] for p, n in added.items()])
                known[path] = table
                registry.committed(tables=1, columns=len(added))
            else:
                items = list(added.items())
                for start in range(0, len(items), COLUMNS_PER_SCHEMA_TRANSACTION):
                    chunk = items[start:start + COLUMNS_PER_SCHEMA_TRANSACTION]
                    with _transaction(con):
                        con.executemany(f"INSERT INTO {s}._columns VALUES (?, ?, ?)", [[table, p, n] for p, n in chunk])
                        for name in dict.fromkeys(n for _, n in chunk):
                            con.execute(f"ALTER TABLE {s}.{quote(table)} ADD COLUMN {quote(name)} VARCHAR")
                    registry.committed(columns=len(chunk))
            registry.columns[table] = assigned = {**assigned, **added}
            columns[path] = {**assigned, **{p: OVERFLOW for p in new if p not in assigned}}
        return known, columns

    def _assign_columns(self, src: str, table: str, assigned: dict[str, str], new: list[str]) -> dict[str, str]:
        """Names for new field paths, up to the table's column cap; the overflow column once needed."""
        reserved = (ROOT_META if table == ROOT_TABLE else CHILD_META) + (OVERFLOW,)
        room = self.max_columns_per_table - sum(1 for p in assigned if p != OVERFLOW)
        kept = sorted(new)[:max(room, 0)]
        names = Naming(assigned, reserved=reserved).assign(kept)
        if len(kept) < len(new):
            log.warning(
                "source '%s': table %s has reached its cap of %d columns; %d more field(s) (e.g. %s) are kept as "
                "JSON in its %s column", src, table, self.max_columns_per_table, len(new) - len(kept),
                readable(sorted(set(new) - set(kept))[0][len(FIELD):]), OVERFLOW)
            if OVERFLOW not in assigned:
                names[OVERFLOW] = OVERFLOW
        return names


class WriterTurns:
    """The writer lock and one open connection, kept across batches for a turn of
    `writer_turn_seconds`, then closed and released so another process's run can write. A turn
    also ends when no write came for IDLE_SECONDS: a run waiting on a slow API holds nothing.

    Why: closing a DuckDB connection checkpoints, and opening one per 500-invoice batch made
    checkpoints most of the load time; holding the lock for a whole run would make parallel
    source runs wait for each other's extraction.
    """

    IDLE_SECONDS = 1.0

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse
        self._lock: FileLock | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._since = self._last_used = 0.0
        self._mutex = threading.Lock()  # the idle timer closes from its own thread
        self._idle_timer: threading.Timer | None = None
        self._threads: int | None = None
        self.turns = 0

    @contextmanager
    def connection(self, threads: int | None = 1) -> Iterator[duckdb.DuckDBPyConnection]:
        """The turn's connection. threads=1 for batch writes: they are small, and DuckDB's parallelism
        cost more CPU than it saved (6.8 vs 5.6 CPU-s for 20k invoices) while the run's other stages
        need the cores; None (DuckDB's default) for the big queries of other steps."""
        with self._mutex:
            if self._con is None:
                self._lock = self.warehouse._acquire()
                try:
                    self._con = self.warehouse._connect()
                except BaseException:
                    self._close()
                    raise
                self._threads = None
                self._since = time.monotonic()
                self.turns += 1
            if threads != self._threads:
                self._con.execute("RESET threads" if threads is None else f"SET threads = {int(threads)}")
                self._threads = threads
            try:
                yield self._con
            except BaseException:
                self._close()  # a failed write leaves nothing half-open for the next one
                raise
            self._last_used = time.monotonic()
            turn_over = self._last_used - self._since >= self.warehouse.config.writer_turn_seconds
            if turn_over:
                self._close()
            else:
                self._arm_idle_timer()
        if turn_over:
            time.sleep(_HANDOVER_PAUSE)  # a waiting process polls the lock every 50 ms: let it in

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self.IDLE_SECONDS, self._close_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _close_if_idle(self) -> None:
        with self._mutex:
            if self._con is not None and time.monotonic() - self._last_used >= self.IDLE_SECONDS * 0.9:
                self._close()

    def close(self) -> None:
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        con, lock, self._con, self._lock = self._con, self._lock, None, None
        try:
            if con is not None:
                con.close()
        finally:
            if lock is not None:
                lock.release()

    def __enter__(self) -> WriterTurns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HANDOVER_PAUSE = 0.15
# Open sessions of this process: resolved database path -> the turns every writer shares.
_SESSIONS: dict[Path, WriterTurns] = {}


class SessionTurns:
    """A run's turns inside a session: the session's connection; closing is the session's business."""

    def __init__(self, shared: WriterTurns):
        self.warehouse = shared.warehouse
        self._shared = shared

    def connection(self, threads: int | None = 1) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self._shared.connection(threads)

    @property
    def turns(self) -> int:
        return self._shared.turns

    def close(self) -> None:
        pass

    def __enter__(self) -> SessionTurns:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass
class _Registry:
    """Cached contents of a source's _tables/_columns and the row counts they were read at."""

    tables_count: int
    columns_count: int
    tables: dict[str, str]  # table path -> table name (root included)
    columns: dict[str, dict[str, str]]  # table name -> field path -> column name
    pending_counts: tuple[int, int] = (0, 0)  # counts once the current transaction commits

    def bump(self, tables: int = 0, columns: int = 0) -> None:
        self.pending_counts = (self.pending_counts[0] + tables, self.pending_counts[1] + columns)

    def committed(self, tables: int = 0, columns: int = 0) -> None:
        """Rows this process added to _tables/_columns and committed (the cache stays current)."""
        self.tables_count += tables
        self.columns_count += columns
        self.bump(tables, columns)


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _fold_overflow(rows: pa.Table, names: dict[str, str]) -> pa.Table:
    """The rows with the fields beyond the column cap folded into one JSON object per row (OVERFLOW)."""
    over = [c for c in rows.column_names if names.get(c) == OVERFLOW]
    if not over:
        return rows
    values = [rows.column(c).to_pylist() for c in over]
    keys = [readable(c[len(FIELD):]) for c in over]
    folded = []
    for row in zip(*values):
        obj = {k: v for k, v in zip(keys, row) if v is not None}
        folded.append(dumps(obj).decode() if obj else None)
    rows = rows.drop_columns(over)
    return rows.append_column(OVERFLOW, pa.array(folded, pa.string()))


_ROOT_META_TYPES = {"_invoice_id": "VARCHAR", "_last_modified_at": "TIMESTAMPTZ", "_loaded_at": "TIMESTAMPTZ", "_run_id": "VARCHAR"}
_CHILD_META_TYPES = {"_invoice_id": "VARCHAR", "_row_id": "VARCHAR", "_parent_row_id": "VARCHAR", "_position": "INTEGER"}


@functools.cache
def _main_schema_key() -> str:
    """Changes whenever this code would create main's tables, views or comments differently."""
    from invoice_pipeline.audit import RULES
    from invoice_pipeline.conformed import TABLE_COMMENTS
    from invoice_pipeline.views import ANALYST_VIEWS, VIEW_COLUMNS

    spec = (CONFORMED_TABLES, TABLE_COMMENTS, ANALYST_VIEWS, VIEW_COLUMNS, [(r.name, r.blocking, r.sql) for r in RULES])
    return hashlib.sha256(repr(spec).encode()).hexdigest()


def apply_comments(con: duckdb.DuckDBPyConnection, catalog: str = "") -> None:
    """COMMENT ON TABLE and COLUMN for every conformed table and column: where it comes from in each source."""
    from invoice_pipeline.conformed import TABLE_COMMENTS

    prefix = f"{catalog}.main." if catalog else "main."
    for table, columns in CONFORMED_TABLES.items():
        con.execute(f"COMMENT ON TABLE {prefix}{table} IS {sql_literal(TABLE_COMMENTS[table])}")
        for c, (_, doc) in columns.items():
            con.execute(f"COMMENT ON COLUMN {prefix}{table}.{quote(c)} IS {sql_literal(doc)}")


def table_counts(con: duckdb.DuckDBPyConnection, schema: str, tables: list[str]) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {quote(schema)}.{quote(t)}").fetchone()[0] for t in tables}


def as_dict_rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
