"""Oracle Commerce Cloud self-service invoices: bearer login, list paging, parallel detail calls.

The list filter `q` is our reading of Fusion's REST conventions (docs/SOURCES.md): a tenant may
refuse it or ignore it. The client probes once per run and, without a working filter, works from
the list alone (details only of invoices new to the warehouse or whose list fields changed).
The re-poll of open invoices (`repoll`) compares list pages with the warehouse the same way, so it
costs list pages, not a detail call per open invoice.
The list walk, its mode probe and that re-poll are in listing.py, the login in auth.py.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError, to_timestamp
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window
from invoice_pipeline.sources.helpers import compare_stored
from invoice_pipeline.sources.oracle_occ.auth import OracleTokenAuth
from invoice_pipeline.sources.oracle_occ.listing import (  # noqa: F401 - the list modes, re-exported
    FILTER, LIST_FIELDS, LIST_ONLY_IGNORED, LIST_ONLY_REFUSED, LIST_PATH, Listings, _id_ranges, _item_id)
from invoice_pipeline.sources.oracle_occ.mapping import map_invoice
from invoice_pipeline.timeutil import iso_utc
from invoice_pipeline.logfold import fold_repeats

log = logging.getLogger("invoice_pipeline.oracle_occ")


class OracleOccConfig(SourceConfig):
    credential_keys: ClassVar[tuple[str, ...]] = ("username", "password")
    type: Literal["oracle_occ"]
    username: str
    password: SecretStr


class OracleOccSource(Listings, Source):
    type_name = "oracle_occ"
    config_model = OracleOccConfig
    default_page_size = 25  # the API caps limit at 25 anyway
    has_installments = True
    key_field = "CustomerTransactionId"
    page_retry_pause = 0.5  # seconds (times the attempt) before re-requesting a page that ended early

    @classmethod
    def describe_calls(cls, config: OracleOccConfig, window: Window) -> str:
        page = config.page_size or cls.default_page_size
        return (f"login (bearer token), then list pages of GET /ccstore/v1/selfservice/invoices with "
                f"q=LastUpdateDate>='{window.start.isoformat()}', orderBy=CustomerTransactionId:asc, "
                f"limit={page}, then one detail call GET .../invoices/<id> per listed invoice "
                f"({config.concurrency} at a time)")

    def __init__(self, name: str, config: OracleOccConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.http.auth = OracleTokenAuth(self.http, config.username, config.password.get_secret_value())
        self._mode: str | None = None  # list mode, probed once per source instance (one run)
        self._changed: set[str] = set()  # listed ids whose list fields differ from the stored version
        self._changed_unwritten = False  # a changed invoice was left out (newer than the window)
        self._compared_all = False  # list-only mode compared every listed invoice with the warehouse

    # -- extraction (the list walk and its mode: listing.py) -----------------------------------
    def _ids_to_fetch(self, window: Window) -> Iterator[str | dict[str, Any]]:
        """Ids whose detail this window needs: from the filtered list, or (list-only mode) the
        listed ids that are new to the warehouse or whose list fields changed since stored. A list
        item without an id is passed on as it is (it becomes a quarantined record, the rest loads)."""
        extra = self.stats.extra
        if self._filter_mode() == FILTER:
            q = f"LastUpdateDate>='{iso_utc(window.start)}';LastUpdateDate<='{iso_utc(window.end)}'"
            for page in self._walk(q):
                extra["ids_new"] = extra.get("ids_new", 0) + len(page)
                for item in page:
                    yield _item_id(item) or self._without_id(item)
            return
        lookup = self.stored_fields
        if lookup is None:
            log.warning("source '%s': no stored versions to compare with; fetching the detail of every listed "
                        "invoice created before the window's end", self.name)
        for key in ("ids_new", "ids_changed", "ids_unchanged", "ids_created_after_window"):
            extra.setdefault(key, 0)
        for page in self._walk(None):
            candidates = []
            for item in page:
                created = _timestamp_or_none(item.get("CreationDate"))
                if not _item_id(item):
                    yield self._without_id(item)
                elif created is not None and created > window.end:  # cannot have been modified inside it
                    extra["ids_created_after_window"] += 1
                else:
                    candidates.append(item)
            if not candidates:
                continue
            for invoice_id, state in compare_stored(lookup, [(_item_id(i), i) for i in candidates], LIST_FIELDS):
                extra[f"ids_{state}"] += 1
                if state == "changed":
                    self._changed.add(invoice_id)
                if state != "unchanged":
                    yield invoice_id
        self._compared_all = lookup is not None  # see _window_records

    def _without_id(self, item: dict[str, Any]) -> dict[str, Any]:
        log.warning("source '%s': a list item has no CustomerTransactionId; quarantining it: %s", self.name,
                    repr(item)[:300])
        self.stats.count("items_without_id")
        return item

    def _detail(self, invoice_id: str | dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(invoice_id, dict):  # a list item without an id: no detail to ask for, quarantined as it is
            return invoice_id
        path = f"{LIST_PATH}/{invoice_id}"
        try:
            body = self.http.request("GET", path).body
        except SourceError as exc:
            if exc.status == 404:  # deleted between the list call and this one
                log.warning("source '%s': invoice %s vanished before its detail call", self.name, invoice_id)
                self.stats.count("vanished")
                return None
            raise
        if not isinstance(body, dict):
            raise self.http.error(f"invoice {invoice_id}: detail response is not a JSON object", endpoint=f"GET {path}")
        self.stats.count("detail_calls")
        return body

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        with fold_repeats(log, "source '%s': invoice %s vanished before its detail call",  # one line, not thousands
                          f"source '{self.name}': {{count}} invoices vanished before their detail call in all "
                          "({folded} more than logged above), e.g. {examples}",
                          example=lambda r: str(r.args[1]), when=lambda r: r.args[0] == self.name):
            yield from self.batches(self._window_records(window))
        extra = self.stats.extra
        log.info(
            "source '%s': list mode %s: %d list pages, %d ids listed, %d new, %d changed, %d unchanged, "
            "%d detail calls, %d kept, %d outside the window", self.name, extra.get("list_mode"), self.stats.pages,
            extra.get("ids_listed", 0), extra.get("ids_new", 0), extra.get("ids_changed", 0),
            extra.get("ids_unchanged", 0), extra.get("detail_calls", 0), self.stats.kept, extra.get("outside_window", 0),
        )
        self.stats.progress(self.name, force=True)

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        """Details of the window's invoices; only versions last updated inside the window are kept
        (a backfill must not write newer versions; the next incremental run reads them), except an
        older version whose list fields changed since stored (list-only mode): that is the current
        version, changed by a receipt that did not move LastUpdateDate, and the merge takes it."""
        self.stats.extra.setdefault("outside_window", 0)
        # A few rounds queued so list paging never starves the detail workers.
        details = self.parallel(self._detail, self._ids_to_fetch(window), "detail", depth=4)
        for payload in details:
            self.stats.scanned += payload is not None
            if payload is not None:
                record = self.record_or_raw(payload)
                modified = record.last_modified_at
                if modified is not None and modified < window.start and record.invoice_id in self._changed:
                    self.stats.count("changed_before_window")
                    self.stats.kept += 1
                    yield record
                elif modified is not None and not window.start <= modified <= window.end:
                    self.stats.extra["outside_window"] += 1
                    if modified > window.end and record.invoice_id in self._changed:
                        self._changed_unwritten = True  # a newer version than the window: the re-poll's
                else:
                    self.stats.kept += 1
                    yield record
            self.stats.progress(self.name)
        if self._compared_all and not self._changed_unwritten:
            # Every listed invoice's balance and status was compared with the stored version and the
            # changed ones are loaded (even when their LastUpdateDate did not move): a re-poll right
            # after this load has nothing left to read (lifecycle.repoll_open_invoices).
            self.stats.extra["balances_compared"] = "all"

    # -- per-record ------------------------------------------------------------------------
    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        invoice_id = payload.get("CustomerTransactionId")
        if invoice_id in (None, ""):
            raise MappingError("CustomerTransactionId: missing")
        return SourceRecord(str(invoice_id), to_timestamp(payload.get("LastUpdateDate"), "LastUpdateDate"), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name)

    # -- lifecycle: specific invoices, the full id list -------------------------------------
    def records_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[SourceRecord]:
        """Current version of these invoices, one detail call each (parallel); an unknown id (404) is skipped.

        Re-polls open invoices: Oracle applies receipts without moving LastUpdateDate, so a
        modification window never sees them. customer_ids is not needed here.
        """
        for payload in self.parallel(self._detail, sorted(set(ids)), "byid", depth=4):
            self.stats.scanned += 1
            if payload is None:
                continue
            record = self.record_or_raw(payload)
            self.stats.kept += 1
            yield record

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id last updated at or after `since` (default start_date): list pages only,
        no detail calls. Deletion reconciliation compares it with the warehouse. Without a working
        filter it is every id the list holds (a superset, which reconciliation allows)."""
        start = since or self.config.start_date
        q = f"LastUpdateDate>='{iso_utc(start)}'" if self._filter_mode() == FILTER else None
        ids: set[str] = set()
        for page in self._walk(q):
            for item in page:
                invoice_id = _item_id(item)
                if not invoice_id:  # an id listing with holes must not mark anything deleted
                    raise self.http.error(f"a list item has no CustomerTransactionId: {item!r}"[:300] + "; the id "
                                          "listing is incomplete, so no invoice is marked deleted",
                                          endpoint=f"GET {LIST_PATH}")
                ids.add(invoice_id)
        return ids



def _timestamp_or_none(value: Any) -> datetime | None:
    try:
        return to_timestamp(value, "CreationDate")
    except MappingError:
        return None

