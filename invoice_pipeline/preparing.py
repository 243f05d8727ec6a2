"""Batches prepared (mapped, flattened, turned into Arrow) on other processes while the run's own
process extracts and writes.

Why: preparing is pure Python and holds the GIL about as long as extraction and writing together;
in one process the other cores mostly idle (figures: benchmarks/RESULTS.md). A batch travels to the worker
as compact JSON bytes and comes back as Arrow tables, both cheap to pickle.

The first batch is always prepared here: a run that fits in one batch (every no-op, most hourly
runs) never pays for starting a process. A source whose class cannot be rebuilt in another
process from (name, config) is prepared here too.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, BinaryIO

from invoice_pipeline.errors import PipelineError
from invoice_pipeline.jsonio import dumps, loads
from invoice_pipeline.batch import GC_FIRST_THRESHOLD, LoadBatch, prepare_batch
from invoice_pipeline.model import SourceRecord
from invoice_pipeline.sources.base import Source

log = logging.getLogger("invoice_pipeline.pipeline")

Packed = list[tuple[str, datetime | None, Any]]  # the payload as JSON bytes, or itself if JSON cannot hold it


class BatchPreparer:
    """`submit(records)` returns the future of `prepare_batch(...)` for them, in or out of process."""

    def __init__(self, source: Source, run_id: str, loaded_at: datetime, start_date: datetime | None, processes: int):
        self.source = source
        self.args = (run_id, loaded_at, start_date)
        self.processes = processes if processes > 0 and _portable(source.mapper()) else 0
        self._workers: list[_Worker] = []
        self._next: itertools.cycle[_Worker] | None = None
        self._submitted = 0
        self._started = 0

    def submit(self, records: Sequence[SourceRecord]) -> Future[tuple[LoadBatch, int]]:
        self._submitted += 1
        if self.processes == 0 or self._submitted == 1:
            done: Future[tuple[LoadBatch, int]] = Future()
            try:
                done.set_result(prepare_batch(self.source, records, *self.args))
            except Exception as exc:  # noqa: BLE001 - delivered through the future, like a worker's
                done.set_exception(exc)
            return done
        if not self._workers:
            log.info("source '%s': preparing batches on %d more process(es)", self.source.name, self.processes)
            self._workers = [_Worker(self.source.mapper()) for _ in range(self.processes)]
            self._started = len(self._workers)
            self._next = itertools.cycle(self._workers)
        packed: Packed = [(r.invoice_id, r.last_modified_at, _pack(r.payload)) for r in records]
        return next(self._next).submit((packed, self.args))

    @property
    def started(self) -> int:
        """How many preparing processes this run started (0: all prepared in-process)."""
        return self._started

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> BatchPreparer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pack(payload: Any) -> Any:
    """Compact JSON bytes (cheap to pickle); a payload JSON text cannot hold (too deep, a lone
    surrogate) travels as itself, to be quarantined by prepare_batch like in-process."""
    try:
        return dumps(payload)
    except TypeError:
        return payload


def _rebuild_args(source: Source) -> tuple[type[Source], str, Any]:
    return type(source), source.name, source.config


def _portable(source: Source) -> bool:
    """Can a worker rebuild this source as type(source)(name, config)? (its mapping needs no more)"""
    if not type(source).portable_mapping:
        return False
    try:
        pickle.dumps(_rebuild_args(source))
    except Exception:  # noqa: BLE001 - a class defined inside a function, a config that cannot travel
        return False
    return True


class _Worker:
    """One preparing process: `python -m invoice_pipeline.preparing`, pickles over its stdin/stdout.

    A plain subprocess rather than multiprocessing: spawn re-imports the caller's __main__, which
    breaks any script that calls run_source without an `if __name__ == "__main__"` guard.
    """

    def __init__(self, source: Source):
        self.source_name = source.name
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the caller's imports
        self.proc = subprocess.Popen([sys.executable, "-m", "invoice_pipeline.preparing"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._waiting: deque[Future] = deque()
        self._lock = threading.Lock()
        self._send(_rebuild_args(source))
        self._reader = threading.Thread(target=self._read, name=f"{source.name}-prepared", daemon=True)
        self._reader.start()

    def submit(self, request: tuple) -> Future:
        future: Future = Future()
        with self._lock:
            self._waiting.append(future)
        try:
            self._send(request)
        except OSError:  # the worker is gone; its reader fails this future with the reason
            pass
        return future

    def _send(self, message: Any) -> None:
        assert self.proc.stdin is not None
        pickle.dump(message, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                ok, value = pickle.load(self.proc.stdout)
            except Exception:  # noqa: BLE001 - EOF or a cut-off message: the process died
                code = self.proc.wait()
                error = PipelineError(
                    f"source '{self.source_name}': the process preparing batches died (exit code {code}); the "
                    "unfinished batches were not written and the cursor did not move: re-run")
                with self._lock:
                    waiting, self._waiting = self._waiting, deque()
                for future in waiting:
                    future.set_exception(error)
                return
            with self._lock:
                future = self._waiting.popleft()
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # end of input: the worker exits
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


# -- in the worker process ---------------------------------------------------------------------------
def _serve(requests: BinaryIO, results: BinaryIO) -> None:
    gc.set_threshold(GC_FIRST_THRESHOLD, *gc.get_threshold()[1:])
    source_class, name, config = pickle.load(requests)
    source: Source | None = None
    try:
        source = source_class(name, config)
        broken: Exception | None = None
    except Exception as exc:  # noqa: BLE001 - reported with every request, in the parent
        broken = exc
    while True:
        try:
            packed, args = pickle.load(requests)
        except EOFError:
            return
        try:
            if broken is not None:
                raise broken
            records = [SourceRecord(key, modified, loads(payload) if type(payload) is bytes else payload)
                       for key, modified, payload in packed]
            del packed
            prepared = prepare_batch(source, records, *args)
        except Exception as exc:  # noqa: BLE001 - raised again in the parent, by run_source
            _send_error(results, exc)
            continue
        # The parsed payloads are garbage once prepared: free them before the reply is written (the
        # worker's peak memory is one batch, not two), and stream the reply instead of copying it.
        del records
        pickle.dump((True, prepared), results, protocol=pickle.HIGHEST_PROTOCOL)
        del prepared
        results.flush()


def _send_error(results: BinaryIO, exc: Exception) -> None:
    try:
        data = pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an exception that cannot be pickled still gets its message home
        data = pickle.dumps((False, PipelineError(f"{type(exc).__name__}: {exc}")))
    results.write(data)
    results.flush()


if __name__ == "__main__":
    _stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() must not corrupt the result stream
    _serve(sys.stdin.buffer, _stdout)
