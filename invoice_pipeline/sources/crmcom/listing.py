"""CRM.COM listings: the accounts receivable list and one AR's invoice list, paged until an empty
page (paging.UntilEmptyPaginator: `number_of_results`/`offset` exist from R13 only and a server may
cap a page below what was asked), one AR's invoices sorted by the window (which has no API filter:
naive local times, read both ways around a DST change), and the log line of what every listing did.

`Listings` is mixed into CrmcomSource (client.py), whose `http`, `stats`, `name`, `config` and
`page_size` it uses; `_init_listing()` sets up its state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from invoice_pipeline.errors import SourceError
from invoice_pipeline.money import to_text
from invoice_pipeline.timeutil import wall_time_readings
from invoice_pipeline.sources.base import SourceRecord, Window
from invoice_pipeline.sources.crmcom.auth import status_validator
from invoice_pipeline.sources.paging import UntilEmptyPaginator, WalkCounts

log = logging.getLogger("invoice_pipeline.crmcom")

AR_PATH = "/accounts_receivable/list"
INVOICES_PATH = "/invoices/list"
MAX_PAGE = 500  # a page size we never ask beyond in normal paging (servers cap silently anyway)
MAX_WHOLE_LIST = 100_000  # the largest number_of_results asked of a server that ignores offset
AR_STATES = ("ACTIVE", "SUSPENDED", "TERMINATED")  # documented life_cycle_state values of an AR
# Wider than any zone's DST shift (2 h at most): only timestamps this close to the window's edges
# can have a second reading inside it, so only they are read twice.
DST_MARGIN = timedelta(hours=3)


@dataclass
class _AccountResult:
    """What one worker found in one AR's invoices (merged into the stats by the calling thread)."""

    account_id: str
    walk: WalkCounts = field(default_factory=WalkCounts)
    scanned: int = 0
    outside: int = 0
    undated: int = 0
    records: list[SourceRecord] = field(default_factory=list)
    older: list[SourceRecord] = field(default_factory=list)  # outside the window, last modified before it
    newer: int = 0  # outside the window, last modified after it (not compared)


class Listings:
    """Paging of CRM.COM's list endpoints (mixed into CrmcomSource)."""

    def _init_listing(self) -> None:
        # Paging that reads until an empty page; it learns the server's cap and whether offset works.
        self.pager = UntilEmptyPaginator(self.http, log, page_size=self.page_size, max_whole_list=MAX_WHOLE_LIST,
                                         limit_param="number_of_results")
        self._ar_filter_required: bool | None = None  # None = not tried; True = list ARs per life_cycle_state

    @property
    def page_size(self) -> int:
        return min(super().page_size, MAX_PAGE)

    # What the paginator learned in this run (tests and operators set or read them here).
    _server_cap = property(lambda self: self.pager.server_cap,
                           lambda self, value: setattr(self.pager, "server_cap", value))
    _offset_ignored = property(lambda self: self.pager.offset_ignored,
                               lambda self, value: setattr(self.pager, "offset_ignored", value))

    def _page(self, path: str, params: dict[str, Any], what: str) -> list[Any]:
        """One page of a list endpoint; the body's status is checked even on HTTP 200."""
        endpoint = f"GET {path}"
        body = self.http.request("GET", path, params=params, validate=status_validator(self.http, endpoint, what)).body
        data = body.get("data")
        if data is None:
            return []
        if not isinstance(data, list):
            raise self.http.error(f"{what}: 'data' is not a list", endpoint=endpoint)
        return data

    @staticmethod
    def _key(item: Any) -> str:
        """An item's id; an item without one is keyed by its content (so a repeat is still seen)."""
        item_id = to_text(item.get("id")) if isinstance(item, dict) else None
        return item_id or "#" + repr(item)

    def _walk(self, path: str, params: dict[str, Any], what: str, counts: WalkCounts) -> Iterator[list[Any]]:
        """Every item of one listing, as lists of items not seen before (see paging.UntilEmptyPaginator)."""
        return self.pager.walk(lambda query, asked: self._page(path, query, asked), params, what, f"GET {path}",
                               counts, self._key)

    def _accounts(self) -> Iterator[str]:
        """Every AR id. The unfiltered list may be refused (each filter of the method is semi-optional,
        one required): then one listing per documented life_cycle_state."""
        counts = WalkCounts()
        try:
            if not self._ar_filter_required:
                try:
                    for page in self._walk(AR_PATH, {}, "accounts receivable", counts):
                        yield from self._ar_ids(page)
                    self._ar_filter_required = False
                    return
                except SourceError as exc:
                    if "MISSING_PARAMETER" not in str(exc) or counts.pages:
                        raise
                    log.warning("source '%s': the unfiltered accounts receivable list was refused (%s); "
                                "listing them per life_cycle_state %s", self.name, exc, ", ".join(AR_STATES))
                    self._ar_filter_required = True
            seen: set[str] = set()
            for state in AR_STATES:
                for page in self._walk(AR_PATH, {"life_cycle_state": state}, f"{state} accounts receivable", counts):
                    for ar_id in self._ar_ids(page):
                        if ar_id not in seen:  # an AR changing state between two listings
                            seen.add(ar_id)
                            yield ar_id
        finally:
            extra = self.stats.extra
            self.stats.pages += counts.pages
            extra["account_pages"] = extra.get("account_pages", 0) + counts.pages
            extra["account_listing"] = "per life_cycle_state" if self._ar_filter_required else "unfiltered"
            self.pager.add(counts)

    def _ar_ids(self, page: list[Any]) -> Iterator[str]:
        for ar in page:
            ar_id = to_text(ar.get("id")) if isinstance(ar, dict) else None
            if not ar_id:
                raise self.http.error(f"an accounts receivable has no id: {ar!r}"[:300], endpoint=f"GET {AR_PATH}")
            yield ar_id

    def _account_ids(self, ar_id: str) -> tuple[list[str], int]:
        """Ids of one AR's invoices (fields_set=id keeps the pages small); also the page count."""
        ids: list[str] = []
        counts = WalkCounts()
        params = {"accounts_receivable_identifier": f"id={ar_id}", "fields_set": "id"}
        try:
            for page in self._walk(INVOICES_PATH, params, f"invoice ids of accounts receivable {ar_id}", counts):
                for item in page:
                    invoice_id = to_text(item.get("id")) if isinstance(item, dict) else None
                    if not invoice_id:
                        raise self.http.error(f"invoices of accounts receivable {ar_id}: an item has no id: {item!r}"[:300],
                                              endpoint=f"GET {INVOICES_PATH}")
                    ids.append(invoice_id)
        finally:
            self.pager.add(counts)
        return ids, counts.pages

    def _log_walks(self) -> None:
        """One line with what every listing did: pages, ids seen, ids new, and each oddity met."""
        w, extra = self.pager.totals, self.stats.extra
        extra.update(list_pages=w.pages, list_rows=w.rows, list_ids_new=w.new, empty_pages_rechecked=w.empty_rechecked,
                     empty_pages_not_end=w.empty_not_end, listings_offset_ignored=w.offset_ignored,
                     server_page_cap=self.pager.server_cap)
        log.info(
            "source '%s': listings: %d pages, %d rows read, %d distinct ids new to their listing, %d kept in the "
            "window; accounts listed %s; %d empty pages asked again (%d were not the end); %d listings where the "
            "server ignored offset; page cap seen: %s",
            self.name, w.pages, w.rows, w.new, self.stats.kept, extra.get("account_listing", "-"), w.empty_rechecked,
            w.empty_not_end, w.offset_ignored, self.pager.server_cap or "none",
        )

    def _in_window(self, record: SourceRecord, window: Window) -> bool:
        """Inside the window under either reading of its naive local time: in the repeated hour at
        the end of DST (and the skipped one at its start) a wall time denotes two instants, and the
        one stored (fold=0, see identify) may lie an hour before the true one and the window."""
        ts = record.last_modified_at
        if ts is None or window.start <= ts <= window.end:
            return True
        if not window.start - DST_MARGIN <= ts <= window.end + DST_MARGIN or self.config.timezone == "UTC":
            return False
        log_info = record.payload.get("log_information")
        text = log_info.get("updated_date") if isinstance(log_info, dict) else None
        try:
            readings = wall_time_readings(str(text), self.config.timezone)
        except ValueError:
            return False
        return any(window.start <= t <= window.end for t in readings)

    def _account_invoices(self, ar_id: str, window: Window, stop: threading.Event) -> _AccountResult:
        """All invoices of one AR (one identifier per call, as the API requires), filtered to the window."""
        result = _AccountResult(ar_id)
        what = f"invoices of accounts receivable {ar_id}"
        walk = self._walk(INVOICES_PATH, {"accounts_receivable_identifier": f"id={ar_id}"}, what, result.walk)
        try:
            for page in walk:
                if stop.is_set():
                    break
                for payload in page:
                    if not isinstance(payload, dict):
                        raise self.http.error(f"{what}: an item is not an object: {payload!r}"[:300],
                                              endpoint=f"GET {INVOICES_PATH}")
                    result.scanned += 1
                    record = self.record_or_raw(payload)
                    if record.last_modified_at is None:
                        result.undated += 1  # cannot be placed in time: pass it on (mapping decides)
                    elif not self._in_window(record, window):
                        result.outside += 1
                        if record.last_modified_at < window.start:
                            result.older.append(record)  # compared with the stored version (see _changed_older)
                        else:
                            result.newer += 1  # a newer version than the window: the next run's
                        continue
                    result.records.append(record)
        finally:
            walk.close()
            self.pager.add(result.walk)
        return result

    def _account_or_none(self, ar_id: str, window: Window, stop: threading.Event) -> _AccountResult | None:
        """One AR's invoices; None when the AR itself is gone (INVALID_PARAMETER), not a failure."""
        try:
            return self._account_invoices(ar_id, window, stop)
        except SourceError as exc:
            if "INVALID_PARAMETER" not in str(exc):
                raise
            log.warning("source '%s': accounts receivable %s no longer exists; skipped", self.name, ar_id)
            return None
