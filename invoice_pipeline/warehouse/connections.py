"""Connections to the DuckDB file under a cross-process writer lock, and writer turns.

DuckDB allows one read-write process per file: every write takes the lock (writer_lock.py) before
opening the file. A run keeps one connection across its batches for a turn (WriterTurns); within
a session (Connections.session) every writer of the process shares one (docs/DESIGN.md, "One
writer, many runs").
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from filelock import FileLock

from invoice_pipeline.config import WarehouseConfig
from invoice_pipeline.writer_lock import acquire_writer_lock


class Connections:
    """The file, its writer lock and connections; Warehouse (the package) adds schema and merge."""

    def __init__(self, config: WarehouseConfig):
        self.config = config
        self.path = Path(config.duckdb_path)
        self.lock_timeout = config.lock_timeout.total_seconds()

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

        Why: opening the file reads its catalog and WAL, and a run's steps open it many times; a
        no-op run spent a large share of its own work connecting (benchmarks/RESULTS.md, addendum 2). The shared connection still follows
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
        # table: checkpoint when a turn ends (at most writer_turn_seconds of writes in the WAL), never
        # in between, as DuckDB's default threshold would (figures: benchmarks/RESULTS.md, "Figures
        # behind design choices in the code").
        con = duckdb.connect(str(self.path), config={"memory_limit": self.config.memory_limit,
                                                     "checkpoint_threshold": "4GB"})
        con.execute("SET TimeZone = 'UTC'")
        return con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read access for the pipeline's own checks, taken under the writer lock: a second process
        cannot open a file another one writes (docs/DESIGN.md, "One writer, many runs")."""
        with self.writer() as con:
            yield con


class WriterTurns:
    """The writer lock and one open connection, kept across batches for a turn of
    `writer_turn_seconds`, then closed and released so another process's run can write. A turn
    also ends when no write came for IDLE_SECONDS: a run waiting on a slow API holds nothing.

    Why: closing a DuckDB connection checkpoints, and opening one per 500-invoice batch made
    checkpoints most of the load time; holding the lock for a whole run would make parallel
    source runs wait for each other's extraction.
    """

    IDLE_SECONDS = 1.0

    def __init__(self, files: Connections):
        self.files = files
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
                self._lock = self.files._acquire()
                try:
                    self._con = self.files._connect()
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
            turn_over = self._last_used - self._since >= self.files.config.writer_turn_seconds
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
        self.files = shared.files
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
