"""Agvance (SSI) Web API: ApiKey + SessionID login, lastModified windows that split themselves.

GetInvoicesList has no paging: one call answers a whole modification window, and a window
holding more than the API's limit (2,000) is refused with HTTP 200 + Status "Error". So the
client walks the run's frozen window in slices of `window_size`, fetches slices in parallel,
and halves any slice the API refuses until it fits (one second at the smallest).
One call and its halving: listing.py; the login: auth.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, SecretStr, field_validator

from invoice_pipeline.config import Duration, SourceConfig
from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError
from invoice_pipeline.sources.agvance.auth import AgvanceSessionAuth
from invoice_pipeline.sources.agvance.listing import (  # noqa: F401 - COUNT_ATTEMPTS re-exported
    COUNT_ATTEMPTS, SECOND, Listings, _floor, number_ranges)
from invoice_pipeline.sources.agvance.mapping import invoice_key, last_modified, map_invoice
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window

log = logging.getLogger("invoice_pipeline.agvance")

ITEMS_PER_CALL = 50  # request items (number ranges) per GetInvoicesList call when reading specific invoices
LIST_IDS_SLICE = timedelta(days=92)  # span per call when listing every key (halved when refused)


def _text(value: Any) -> Any:
    # database_id: "12345" in YAML is a string, 12345 an int; both mean the same database.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class AgvanceConfig(SourceConfig):
    """Agvance keys (docs/SOURCES.md). `window_size`: the span of LastModifiedUtc asked for per call
    (default 7 days); a slice the API refuses as too large is halved automatically, so this
    only tunes the number of calls, never correctness."""

    credential_keys: ClassVar[tuple[str, ...]] = ("username", "password", "api_key", "database_id")
    type: Literal["agvance"]
    api_key: SecretStr
    username: str
    password: SecretStr
    database_id: Annotated[str, BeforeValidator(_text)]
    currency: str = "USD"
    window_size: Duration = timedelta(days=7)

    @field_validator("window_size")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < SECOND:
            raise ValueError("must be at least 1s (the API's bounds have second precision)")
        return value


class AgvanceSource(Listings, Source):
    type_name = "agvance"
    config_model = AgvanceConfig
    default_page_size = 2000  # not a page: the API's maximum result set per window
    has_installments = False

    @classmethod
    def describe_calls(cls, config: AgvanceConfig, window: Window) -> str:
        size = getattr(config, "window_size", None)
        slices = math.ceil((window.end - window.start) / size) if size else 1
        span = f"{size.total_seconds() / 86400:g} days" if size else "the whole window"
        return (f"login (ApiKey + SessionID), then GetInvoicesList per lastModified slice of {span}: "
                f"{max(slices, 1)} slice(s), {config.concurrency} at a time, a slice the API refuses as too "
                "large halved until it fits; then the invoices' details")

    def __init__(self, name: str, config: AgvanceConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.config: AgvanceConfig = config
        self.auth = AgvanceSessionAuth(
            self.http, config.api_key.get_secret_value(), config.username,
            config.password.get_secret_value(), config.database_id,
        )
        self.http.auth = self.auth

    # -- the walk ------------------------------------------------------------------------------
    def _windows(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Consecutive slices that neither overlap nor leave a gap at second precision."""
        step = self.config.window_size
        lo = start
        while lo <= end:
            hi = end if step > end - lo else _floor(lo + step) - SECOND  # no overflow on a huge step
            yield lo, max(hi, lo)
            lo = max(hi, lo) + SECOND

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        try:
            yield from self.batches(self._window_records(window))
            self.stats.progress(self.name, force=True)
        finally:
            extra = self.stats.extra
            extra["logins"] = self.auth.logins
            log.info(
                "source '%s': %d windows asked (%d calls, %d splits of a too-large window, %d answers whose Count "
                "disagreed), %d invoices read, %d distinct keys, %d kept (newer versions included), %d repeated "
                "copies dropped",
                self.name, extra.get("windows", 0), self.stats.pages, extra.get("window_splits", 0),
                extra.get("count_mismatches", 0), self.stats.scanned, extra.get("keys_new", 0), self.stats.kept,
                extra.get("duplicates", 0),
            )

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        # The API has whole seconds: flooring both ends keeps every record of the window.
        start, end = _floor(window.start), _floor(window.end)
        newest: dict[str, datetime | None] = {}
        for key in ("window_splits", "duplicates", "keys_new", "windows"):
            self.stats.extra.setdefault(key, 0)

        def slices() -> Iterator[tuple[datetime, datetime]]:
            for span in self._windows(start, end):
                self.stats.extra["windows"] += 1
                self.stats.progress(self.name)
                yield span

        # A slice is taken whole before any of it is yielded.
        for payloads in self.parallel(lambda span: self._fetch(*span), slices(), "window"):
            for payload in payloads:
                rec = self.record_or_raw(payload)
                # Inclusive bounds and re-read windows deliver a record more than once:
                # keep the first copy of each version and any newer version.
                if rec.invoice_id in newest:
                    seen = newest[rec.invoice_id]
                    if rec.last_modified_at is None or (seen is not None and rec.last_modified_at <= seen):
                        self.stats.extra["duplicates"] += 1
                        continue
                else:
                    self.stats.extra["keys_new"] += 1
                newest[rec.invoice_id] = rec.last_modified_at
                self.stats.kept += 1
                yield rec

    def record_or_raw(self, payload: dict[str, Any]) -> SourceRecord:
        """identify(), but a payload without usable keys still travels on (to quarantine)."""
        try:
            return self.identify(payload)
        except MappingError:
            loc, num = payload.get("InvoiceLocation"), payload.get("InvoiceNumber")
            # A half key ("LOC-") would merge two broken records into one: no key, quarantine both.
            return SourceRecord(f"{loc}-{num}" if loc and num else "", None, payload)

    # -- per-record ----------------------------------------------------------------------------
    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        key = invoice_key(payload)
        return SourceRecord(key, last_modified(payload, f"invoice {key}: "), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name, self.config.currency)

    # -- lifecycle: specific invoices, the full id list ------------------------------------------
    def _all_time(self) -> tuple[datetime, datetime]:
        """start_date .. a day ahead: everything loadable, and nothing modified while we read is missed."""
        return _floor(self.config.start_date), _floor(datetime.now(UTC) + timedelta(days=1))

    def records_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[SourceRecord]:
        """Current version of these invoices: request items (locationId, startInvoiceNumber,
        endInvoiceNumber) over near-contiguous number ranges, ITEMS_PER_CALL per call, no date bound
        beyond start_date. Filtered to the ids asked for, so an API that ignores the number range is
        still correct (it only returns more, and a too-large answer splits by time as usual).

        Newest version of each asked-for invoice. A later answer can supersede an earlier one,
        so every call is read before the first record leaves (the set is bounded by `ids`)."""
        wanted = set(ids)
        items = number_ranges(wanted)
        start, end = self._all_time()
        groups = [items[i : i + ITEMS_PER_CALL] for i in range(0, len(items), ITEMS_PER_CALL)]
        newest: dict[str, SourceRecord] = {}
        for payloads in self.parallel(lambda group: self._fetch(start, end, group), groups, "byid"):
            for payload in payloads:
                rec = self.record_or_raw(payload)
                if rec.invoice_id in wanted:
                    prev = newest.get(rec.invoice_id)
                    if prev is None or (rec.last_modified_at and prev.last_modified_at
                                        and rec.last_modified_at > prev.last_modified_at):
                        newest[rec.invoice_id] = rec
        self.stats.kept += len(newest)
        yield from newest.values()

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice key modified at or after `since` (default start_date), up to a day ahead.

        The API has no id-only listing: slices of LIST_IDS_SLICE (parallel), each halved by time
        wherever the API refuses it as too large; only the keys are kept, so memory stays flat."""
        start, end = self._all_time()
        start = _floor(since) if since else start
        slices, lo = [], start
        while lo <= end:
            hi = min(lo + LIST_IDS_SLICE - SECOND, end)
            slices.append((lo, hi))
            lo = hi + SECOND

        def keys(span: tuple[datetime, datetime]) -> set[str]:
            return {self.record_or_raw(p).invoice_id for p in self._fetch(*span)}

        return set().union(*self.parallel(keys, slices, "ids"))
