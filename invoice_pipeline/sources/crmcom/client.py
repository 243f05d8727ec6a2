"""CRM.COM Web API: token login, every accounts receivable, client-side incremental filter.

The API has no date filter and lists invoices only per accounts receivable, so a run pages the
AR list, pages every AR's invoices (in parallel, bounded by `concurrency`) and keeps those whose
naive `log_information.updated_date`, read in the tenant's `timezone`, falls inside the window.

Paging (docs/SOURCES.md, "crmcom"): `number_of_results`/`offset` exist from R13 only and a
server may cap a page below what was asked, so a listing is read until an empty page, never stopped
at a short one, with the guards of paging.UntilEmptyPaginator (a server before R13 ignores `offset`):
listing.py. The login and the body's status check: auth.py.
"""

from __future__ import annotations

import logging
import threading
from contextlib import closing
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError, to_text, to_timestamp
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window
from invoice_pipeline.sources.helpers import CurrencyCode, TimeZoneName, compare_stored
from invoice_pipeline.sources.crmcom.auth import CrmTokenAuth
from invoice_pipeline.sources.crmcom.listing import Listings, _AccountResult
from invoice_pipeline.sources.crmcom.mapping import map_invoice

log = logging.getLogger("invoice_pipeline.crmcom")

# Compared with the stored version for invoices read outside the window (a payment moves them
# without moving updated_date); COMPARE_CHUNK of them per warehouse query.
BALANCE_FIELDS = ("outstanding_amount", "life_cycle_state")
COMPARE_CHUNK = 2000


class CrmcomConfig(SourceConfig):
    credential_keys: ClassVar[tuple[str, ...]] = ("username", "password", "organisation")
    type: Literal["crmcom"]
    username: str
    password: SecretStr
    organisation: str
    timezone: TimeZoneName = "UTC"  # zone of the API's naive timestamps
    currency: CurrencyCode = "USD"  # for invoices without currency_rate_period


class CrmcomSource(Listings, Source):
    type_name = "crmcom"
    key_field = "id"
    config_model = CrmcomConfig
    default_page_size = 200
    has_installments = False

    @classmethod
    def describe_calls(cls, config: CrmcomConfig, window: Window) -> str:
        return ("login (token), then pages of POST /accounts_receivable/list, then for every accounts "
                f"receivable the pages of /invoices/list ({config.concurrency} ARs at a time); the API has "
                "no date filter, so every invoice is listed and those whose updated_date falls inside the "
                "window are kept")

    def __init__(self, name: str, config: CrmcomConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.config: CrmcomConfig = config
        self.auth = CrmTokenAuth(self.http, config.username, config.password.get_secret_value(), config.organisation)
        self.http.auth = self.auth
        self._init_listing()

    def _merge(self, result: _AccountResult, seen: set[str]) -> list[SourceRecord]:
        extra = self.stats.extra
        self.stats.pages += result.walk.pages
        self.stats.scanned += result.scanned
        extra["accounts_receivable"] = extra.get("accounts_receivable", 0) + 1
        extra["invoice_pages"] = extra.get("invoice_pages", 0) + result.walk.pages
        extra["invoices_scanned"] = extra.get("invoices_scanned", 0) + result.scanned
        extra["invoices_outside_window"] = extra.get("invoices_outside_window", 0) + result.outside
        extra["invoices_after_window"] = extra.get("invoices_after_window", 0) + result.newer
        if result.undated:
            extra["invoices_without_updated_date"] = extra.get("invoices_without_updated_date", 0) + result.undated
        fresh = []
        for record in result.records:
            if record.invoice_id not in seen:
                seen.add(record.invoice_id)
                fresh.append(record)
        self.stats.kept += len(fresh)
        extra["invoices_kept"] = self.stats.kept
        return fresh

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        self.stats.extra.setdefault("invoices_scanned", 0)
        self.stats.extra.setdefault("invoices_kept", 0)
        try:
            yield from self.batches(self._window_records(window))
            self.stats.progress(self.name, force=True)
        finally:
            self._log_walks()
            # Release the token even when the run fails (close() would too; releasing twice is a no-op).
            self.auth.close()

    def _changed_older(self, older: list[SourceRecord], seen: set[str]) -> list[SourceRecord]:
        """Of invoices read but last modified before the window, those whose outstanding_amount or
        life_cycle_state differs from the stored version: a payment that did not move updated_date.
        They were read anyway (the API lists every invoice of every AR), so loading them costs no
        call and the re-poll after this load has nothing left to read."""
        lookup = self.stored_fields
        if lookup is None or not older:
            return []
        extra = self.stats.extra
        changed = []
        # "new" = not in the warehouse: older than its start or never loaded; not ours to add here.
        for record, (_, state) in zip(older, compare_stored(lookup, [(r.invoice_id, r.payload) for r in older],
                                                            BALANCE_FIELDS)):
            if state == "changed" and record.invoice_id not in seen:
                seen.add(record.invoice_id)
                changed.append(record)
        extra["invoices_changed_before_window"] = extra.get("invoices_changed_before_window", 0) + len(changed)
        self.stats.kept += len(changed)
        extra["invoices_kept"] = self.stats.kept
        return changed

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        stop = threading.Event()
        seen: set[str] = set()
        older: list[SourceRecord] = []  # compared with the warehouse in chunks (one query per chunk)

        def merge(result: _AccountResult) -> Iterator[SourceRecord]:
            yield from self._merge(result, seen)
            older.extend(result.older)
            if len(older) >= COMPARE_CHUNK:
                yield from self._changed_older(older, seen)
                older.clear()

        # Bounded, results in AR order; closing() stops the workers at once when the consumer stops or fails.
        with closing(self.parallel(lambda ar_id: self._account_invoices(ar_id, window, stop), self._accounts(),
                                   "ar", stop=stop)) as results:
            for result in results:
                yield from merge(result)
                self.stats.progress(self.name)
        yield from self._changed_older(older, seen)
        if self.stored_fields is not None and not self.stats.extra.get("invoices_after_window"):
            # Every invoice of every AR was read and each one outside the window compared with its
            # stored balance and state: lifecycle.repoll_open_invoices skips the re-poll after this
            # load. (Not after a backfill that left newer versions unread.)
            self.stats.extra["balances_compared"] = "all"

    # -- per-record ------------------------------------------------------------------------

    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        invoice_id = to_text(payload.get("id"))
        if not invoice_id:
            raise MappingError("id: missing")
        log_info = payload.get("log_information")
        updated = log_info.get("updated_date") if isinstance(log_info, dict) else None
        modified: datetime | None = to_timestamp(updated, "log_information.updated_date", self.config.timezone)
        return SourceRecord(invoice_id, modified, payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name, timezone=self.config.timezone, currency=self.config.currency)

    # -- lifecycle: specific invoices, the full id list ---------------------------------------
    def records_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[SourceRecord]:
        """Current version of these invoices: the API lists invoices only per AR, so read the ARs
        that hold them (customer_ids = accounts_receivable.id as stored) or, without them, every AR."""
        wanted = set(ids)
        everything = Window(datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
        stop = threading.Event()
        accounts = sorted(set(customer_ids)) if customer_ids else list(self._accounts())
        with closing(self.parallel(lambda ar: self._account_or_none(ar, everything, stop), accounts, "byid",
                                   stop=stop)) as results:
            for result in results:
                if result is None:
                    continue
                self.stats.pages += result.walk.pages
                self.stats.scanned += result.scanned
                fresh = [record for record in result.records if record.invoice_id in wanted]
                wanted.difference_update(record.invoice_id for record in fresh)
                self.stats.kept += len(fresh)
                yield from fresh

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id of every AR. `since` is ignored: the API has no date filter."""
        found: set[str] = set()
        try:
            for ids, pages in self.parallel(self._account_ids, self._accounts(), "ids"):
                self.stats.pages += pages
                self.stats.scanned += len(ids)
                found.update(ids)
        finally:
            self._log_walks()
        return found

