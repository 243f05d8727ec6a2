"""The small interface every source system implements.

A source is: a config model (its keys), an HTTP client with its auth, an `extract` that walks a
time window and yields batches of raw invoices, `identify` (key and version of one raw invoice)
and `to_conformed` (its mapping to the conformed model). Everything else (flattening, loading,
cursors, Dagster) is generic and lives outside `sources/`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.errors import PipelineError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.sources.pool import ordered_map  # noqa: F401 - the clients' pool, re-exported here
from invoice_pipeline.model import ConformedInvoice, SourceRecord, Window  # re-exported: the core model

log = logging.getLogger("invoice_pipeline.extract")
# (invoice ids, top-level raw field names) -> {invoice id: {field: stored value}} for the ids the
# warehouse holds (an id it lacks is absent). Lets a client skip invoices that did not change.
StoredFields = Callable[[Sequence[str], Sequence[str]], dict[str, dict[str, Any]]]


def batched(records: Iterable[SourceRecord], size: int) -> Iterator[list[SourceRecord]]:
    """Lists of `size` records (the last one shorter): the unit each committed write takes.

    Closing this generator early closes `records` at once (a generator's thread pools and sessions
    shut down then, not whenever it is garbage-collected)."""
    batch: list[SourceRecord] = []
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()


@dataclass
class ExtractStats:
    """What one extraction did, for logs and Dagster metadata.

    Thread safety: a counter a worker thread may touch (anything updated inside a function given to
    `ordered_map`) is changed only through `count()`, which holds the lock; plain `+=` and `extra[...] =`
    are for the consuming thread alone (writes to different counters never lose one another).
    """

    pages: int = 0
    scanned: int = 0  # invoices the API returned
    kept: int = 0  # of which inside the window and yielded
    expected_total: int | None = None  # invoices the API said the walk holds, when it says: progress shows % and ETA
    extra: dict[str, Any] = field(default_factory=dict)
    http: Any = None  # the client's HttpStats, for request counts and rates in progress lines
    started: float = field(default_factory=time.monotonic)
    _last_progress: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter, from any thread: `pages`, `scanned`, `kept` or an `extra` key."""
        with self._lock:
            if name in ("pages", "scanned", "kept"):
                setattr(self, name, getattr(self, name) + n)
            else:
                self.extra[name] = self.extra.get(name, 0) + n

    def progress(self, source: str, every: float = 5.0, force: bool = False) -> None:
        """A steady log line with counts and rates (visible in Dagster's run logs)."""
        now = time.monotonic()
        if not force and now - self._last_progress < every:
            return
        self._last_progress = now
        elapsed = max(now - self.started, 1e-9)
        calls = self.http.api_calls if self.http is not None else 0
        log.info(
            "source '%s': %d pages, %d invoices scanned%s, %d kept, %.1f invoices/s, %d requests (%.1f/s)",
            source, self.pages, self.scanned, self._share(elapsed), self.kept, self.scanned / elapsed, calls,
            calls / elapsed,
        )

    def _share(self, elapsed: float) -> str:
        """' of 12000 (41%, ETA 2m05s)' when the API told the total, else ''."""
        total = self.expected_total
        if not total or total <= 0:
            return ""
        done = min(self.scanned, total)
        if not done:
            return f" of {total} (0%)"
        eta = round((total - done) * elapsed / done)
        return f" of {total} ({100 * done // total}%, ETA {eta // 60}m{eta % 60:02d}s)"


class Source(ABC):
    """Base of every source system. Subclasses set the class attributes and the three methods."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[SourceConfig]]
    default_page_size: ClassVar[int] = 100
    # Sources without installment objects get one derived installment per invoice (docs/DATA_DICTIONARY.md).
    has_installments: ClassVar[bool] = False
    key_field: ClassVar[str | None] = None  # top-level field holding the invoice key, when there is one
    # identify() and to_conformed() use only name and config, so another process can rebuild them
    # with cls(name, config) and prepare batches in parallel (see preparing.py).
    portable_mapping: ClassVar[bool] = True
    # Set by the pipeline (run_source) before extract(); None when a client runs on its own.
    stored_fields: StoredFields | None = None

    def __init__(self, name: str, config: SourceConfig, http: HttpClient | None = None):
        self.name = name
        self.config = config
        self.http = http or HttpClient(
            name,
            config.base_url,
            timeout=config.timeout.total_seconds(),
            max_retries=config.max_retries,
            pool_size=config.concurrency,
            secrets=config.secrets(),
            credential_keys=type(config).credential_keys,
        )
        self.stats = ExtractStats(http=self.http.stats)

    @property
    def page_size(self) -> int:
        return self.config.page_size or self.default_page_size

    @abstractmethod
    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        """Yield batches of raw invoices modified inside the window (duplicates allowed)."""

    @abstractmethod
    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        """Key and version of one raw invoice; raises MappingError if it has none."""

    @abstractmethod
    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        """Map one raw invoice to the conformed model; raises MappingError to quarantine it."""

    @classmethod
    def describe_calls(cls, config: SourceConfig, window: Window) -> str:
        """What one extraction of `window` would ask the API, in words (`run --dry-run`, dryrun.py).
        No call is made; a client overrides this with its own endpoints and paging."""
        return f"the {config.type} client's list and detail calls"

    # -- lifecycle: specific invoices and the full id list (re-poll, deletion reconciliation) -------
    def fetch_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        """Batches of the current version of these invoices; an id the API no longer knows is absent.
        customer_ids: the stored customer keys of these invoices, for APIs that list per customer.
        A client writes records_by_ids (the records, one by one); this batches them."""
        return self.batches(self.records_by_ids(ids, customer_ids=customer_ids))

    def records_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[SourceRecord]:
        """The records fetch_by_ids batches (a client's generator); the default says the source has none."""
        raise PipelineError(f"source '{self.name}' ({self.type_name}) cannot read specific invoices (no fetch_by_ids)")

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id modified at or after `since` (default start_date); a superset is allowed."""
        raise PipelineError(f"source '{self.name}' ({self.type_name}) cannot list its invoice ids (no list_ids)")

    def parallel(self, fn: Callable[[Any], Any], items: Iterable[Any], name: str, depth: int = 2,
                 stop: threading.Event | None = None) -> Iterator[Any]:
        """fn over items on `concurrency` threads, `depth` x as many calls in flight, results in order
        (ordered_map: bounded, lazy in `items`, stops the workers when the consumer stops)."""
        workers = self.config.concurrency
        return ordered_map(fn, items, workers, workers * depth, f"{self.name}-{name}", stop)

    def batches(self, records: Iterable[SourceRecord]) -> Iterator[list[SourceRecord]]:
        """`batched(records, config.batch_size)`: what extract() and fetch_by_ids() yield."""
        return batched(records, self.config.batch_size)

    def mapper(self) -> Source:
        """What identify()/to_conformed() run on; a wrapper (lifecycle's given batches) reaches its inner source."""
        return self

    def record_or_raw(self, payload: dict[str, Any]) -> SourceRecord:
        """identify(), but a payload without a usable key or version still travels on (to quarantine)."""
        try:
            return self.identify(payload)
        except Exception:  # noqa: BLE001 - any identification failure is the record's, not the run's
            key = payload.get(self.key_field) if self.key_field and isinstance(payload, dict) else None
            return SourceRecord(str(key or ""), None, payload)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
