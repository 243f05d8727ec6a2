"""The warehouse's cross-process writer lock, and who holds it.

The lock is an OS file lock: the kernel releases it when its process dies, however it dies, so a
killed run can never keep the warehouse locked. A process that waits sleeps (the lock is polled every
50 ms), logs every 30 s which process holds the lock and since when, and gives up after the
configured `warehouse.lock_timeout` with a message that says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from invoice_pipeline.errors import PipelineError

log = logging.getLogger("invoice_pipeline.warehouse")
LOG_EVERY_SECONDS = 30.0


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def describe_holder(lock_path: Path) -> str:
    """Who wrote the holder note last (the holder, while the lock is held)."""
    try:
        note = json.loads(_holder_path(lock_path).read_text())
    except (OSError, ValueError):
        return "another process (no holder note)"
    return f"pid {note.get('pid')} on {note.get('host')} ({note.get('command')}), holding since {note.get('since')}"


def _write_holder(lock_path: Path) -> None:
    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:3]) if sys.argv else "python",
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        _holder_path(lock_path).write_text(json.dumps(note))
    except OSError:  # only a diagnostic: never fail a write over it
        log.debug("could not write the lock holder note", exc_info=True)


def acquire_writer_lock(db_path: Path, timeout_s: float) -> FileLock:
    lock_path = Path(str(db_path) + ".lock")
    lock = FileLock(str(lock_path), thread_local=False)  # a run's turns span threads
    started = time.monotonic()
    try:
        lock.acquire(timeout=5)
    except Timeout:
        while True:
            waited = time.monotonic() - started
            log.info("warehouse %s: waiting %.0fs for the writer lock, held by %s", db_path, waited,
                     describe_holder(lock_path))
            remaining = timeout_s - waited
            if remaining <= 0:
                raise PipelineError(
                    f"warehouse {db_path}: still locked after {waited:.0f}s by {describe_holder(lock_path)}. "
                    "The OS frees this lock when its process ends, so that process is alive: wait for it, stop "
                    "it, or raise warehouse.lock_timeout in the config."
                ) from None
            try:
                lock.acquire(timeout=min(LOG_EVERY_SECONDS, remaining))
                break
            except Timeout:
                continue
        log.info("warehouse lock acquired after %.1fs", time.monotonic() - started)
    _write_holder(lock_path)
    return lock
