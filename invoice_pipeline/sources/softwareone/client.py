"""SoftwareOne Marketplace billing invoices (docs/SOURCES.md): bearer token, raw RQL, $meta offset paging.

The calls, their paging and the re-request of incomplete invoices: listing.py."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError
from invoice_pipeline.sources.auth import StaticTokenAuth
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window
from invoice_pipeline.sources.softwareone.listing import (  # noqa: F401 - REFETCH_CHUNK re-exported
    ENDPOINT, LIST_PATH, ORDER, REFETCH_CHUNK, SELECT, Listings)
from invoice_pipeline.sources.softwareone.mapping import last_modified, map_invoice

log = logging.getLogger("invoice_pipeline.softwareone")



class SoftwareOneConfig(SourceConfig):
    credential_keys: ClassVar[tuple[str, ...]] = ("api_token",)
    type: Literal["softwareone"]
    api_token: SecretStr


def rql_time(ts: datetime, *, round_up: bool = False) -> str:
    """UTC with milliseconds, double-quoted, as the API wants: "2025-01-31T23:59:59.000Z"."""
    ts = ts.astimezone(UTC)
    floor = ts.replace(microsecond=ts.microsecond // 1000 * 1000)
    if round_up and floor != ts:
        floor += timedelta(milliseconds=1)
    return f'"{floor:%Y-%m-%dT%H:%M:%S}.{floor.microsecond // 1000:03d}Z"'


def window_filter(window: Window) -> str:
    """RQL for invoices modified inside the window.

    Never-updated invoices have no audit.updated, so `ge(audit.updated.at, from)` alone would miss
    new ones: `or` it with `ge(audit.created.at, from)` (updated >= created, so nothing else slips).
    The upper bound is on the immutable created.at only: an invoice updated after the frozen bound
    is still read (a newer version; the loader keeps the newest), and the result set can only grow
    while we page. Window.end is inclusive while the API's timestamps have 100 ns precision and RQL
    milliseconds, so we use `le` with the bound rounded *up* to the millisecond rather than the
    doc's `lt`: an invoice created exactly at the bound is read by this run and (lookback) the next
    one - a duplicate, never a gap. The lower bound is rounded down for the same reason.
    """
    start, end = rql_time(window.start), rql_time(window.end, round_up=True)
    return f"and(or(ge(audit.updated.at,{start}),ge(audit.created.at,{start})),le(audit.created.at,{end}))"


class SoftwareOneSource(Listings, Source):
    type_name = "softwareone"
    key_field = "id"
    config_model = SoftwareOneConfig
    default_page_size = 100  # the API caps limit at 100 anyway
    page_retry_pause = 0.5  # seconds (times the attempt) before re-requesting a short page

    @classmethod
    def describe_calls(cls, config: SoftwareOneConfig, window: Window) -> str:
        page = config.page_size or cls.default_page_size
        return (f"list pages of GET {LIST_PATH}?{window_filter(window)}&{SELECT}&{ORDER}"
                f"&limit={page}&offset=..., the first page giving $meta.pagination.total, the "
                f"rest {config.concurrency} at a time; invoices without their lines re-requested by id")

    def __init__(self, name: str, config: SoftwareOneConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.http.auth = StaticTokenAuth("Authorization", config.api_token, "Bearer {}")  # a long-lived API token

    # -- extraction ------------------------------------------------------------------------------
    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        yield from self.batches(self._window_records(window))
        self.stats.progress(self.name, force=True)

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        """The window's records, page by page (a page is taken whole before any of it is yielded)."""
        seen: set[str] = set()
        for body in self._pages(window_filter(window)):
            self.stats.scanned += len(body["data"])
            complete = self._complete(body)
            fresh: list[SourceRecord] = []
            for item in complete:
                record = self.record_or_raw(item)
                if record.invoice_id in seen:
                    continue
                seen.add(record.invoice_id)
                fresh.append(record)
                self.stats.kept += 1
            self.stats.extra["ids_new"] = len(seen)
            yield from fresh
            self.stats.progress(self.name)
        extra = self.stats.extra
        log.info("source '%s': %d pages, %d ids listed, %d new, %d re-requested for omitted fields, "
                 "%d pages re-requested", self.name, self.stats.pages, extra.get("ids_listed", 0), len(seen), extra.get("omitted_refetched", 0),
                 extra.get("pages_rerequested", 0))

    # -- per record --------------------------------------------------------------------------------
    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        invoice_id = payload.get("id")
        if invoice_id in (None, ""):
            raise MappingError("id: missing")
        return SourceRecord(str(invoice_id), last_modified(payload), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name)

    # -- lifecycle: specific invoices, the full id list -------------------------------------------
    def records_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[SourceRecord]:
        """Current version of these invoices: RQL or(eq(id,..)) chunks of REFETCH_CHUNK, with lines;
        ids the API no longer knows are simply absent. customer_ids is not needed here."""
        wanted = sorted(set(ids))
        wanted_set = set(wanted)
        chunks = [wanted[i : i + REFETCH_CHUNK] for i in range(0, len(wanted), REFETCH_CHUNK)]
        for items in self.parallel(self._by_ids_chunk, chunks, "byid"):
            self.stats.scanned += len(items)
            fresh: list[SourceRecord] = []
            for item in items:
                record = self.record_or_raw(item)
                if record.invoice_id in wanted_set:
                    fresh.append(record)
                    self.stats.kept += 1
            yield from fresh

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id created or updated at or after `since` (default start_date): pages of
        `select=audit` only (lines left out), ordered by immutable keys so paging never skips."""
        start = rql_time(since or self.config.start_date)
        rql = f"or(ge(audit.updated.at,{start}),ge(audit.created.at,{start}))"
        ids: set[str] = set()
        for body in self._pages(rql, select="select=audit"):
            for item in body["data"]:
                invoice_id = item.get("id") if isinstance(item, dict) else None
                if invoice_id in (None, ""):
                    raise self.http.error(f"list item without id: {str(item)[:80]}", endpoint=ENDPOINT)
                ids.add(str(invoice_id))
            self.stats.scanned += len(body["data"])
        return ids
