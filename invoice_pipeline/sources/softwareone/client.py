"""SoftwareOne Marketplace billing invoices (docs/SOURCES.md): bearer token, raw RQL, $meta offset paging."""

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
from invoice_pipeline.sources.helpers import require_objects
from invoice_pipeline.sources.paging import PageGuard, TotalsPaginator
from invoice_pipeline.sources.softwareone.mapping import last_modified, lines_missing, map_invoice

log = logging.getLogger("invoice_pipeline.softwareone")

LIST_PATH = "/public/v1/billing/invoices"
ENDPOINT = f"GET {LIST_PATH}"
# audit is needed to filter/order on it; lines, erpData and price are left out unless selected
# (named in $meta.omitted) and the mapping needs all three.
SELECTED = ("lines", "erpData", "price")
SELECT = "select=audit,+lines,+erpData,+price"
# Immutable sort keys: invoices joining the result set mid-run (updated meanwhile) shift later
# pages by one, which repeats a record but never skips one.
ORDER = "order=+audit.created.at,+id"
REFETCH_CHUNK = 50  # ids per or(eq(id,..),...) re-request: half the page cap (100), a URL of ~1.5 KB
PAGE_RETRIES = 2  # re-requests of a page short of its own total, before failing the run
MAX_RESTARTS = 2  # walks again of a list that shrank while paging


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


class SoftwareOneSource(Source):
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

    # -- HTTP ----------------------------------------------------------------------------------
    def _validate(self, status: int, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise self.http.error("response has no 'data' array", endpoint=ENDPOINT, status=status)

    def _get(self, rql: str, offset: int, limit: int, select: str = SELECT) -> dict[str, Any]:
        query = f"{rql}&{select}&{ORDER}&limit={limit}&offset={offset}"
        body = self.http.request("GET", LIST_PATH, raw_query=query, validate=self._validate).body
        self.stats.count("pages")  # pages are fetched in parallel
        return body

    @staticmethod
    def _pagination(body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("$meta")
        pag = meta.get("pagination") if isinstance(meta, dict) else None
        return pag if isinstance(pag, dict) else {}

    @classmethod
    def _total(cls, body: dict[str, Any]) -> int | None:
        total = cls._pagination(body).get("total")
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    def _pages(self, rql: str, select: str = SELECT) -> Iterator[dict[str, Any]]:
        """All pages of a query, in order, each checked by paging.TotalsPaginator: `$meta.pagination`
        tells the total and the limit the server really used (capped at 100); pages after the first
        are fetched in parallel; a total that fell restarts the walk (MAX_RESTARTS), so the caller
        drops repeated ids."""
        def limit_of(body: dict[str, Any]) -> int | None:
            limit = self._pagination(body).get("limit")
            return limit if isinstance(limit, int) else None

        return TotalsPaginator(
            lambda: PageGuard(self.http, self.stats, log, ENDPOINT, retries=PAGE_RETRIES, pause=self.page_retry_pause),
            workers=self.config.concurrency, name=f"{self.name}-page", max_restarts=MAX_RESTARTS,
            items_of=lambda body: body["data"], total_of=self._total, limit_of=limit_of,
            key=lambda item: str(item.get("id")), meta="$meta.pagination",
        ).pages(lambda offset, limit: self._get(rql, offset, limit, select),
                lambda offset, limit: f"GET {LIST_PATH}?{rql}&{select}&{ORDER}&limit={limit}&offset={offset}",
                self.page_size)

    def _complete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """A page's invoices, those the API left a selected field out of requested again (last)."""
        page_omitted = _meta_omitted(body)
        complete, missing = [], []
        for item in require_objects(self.http, body["data"], "list page", ENDPOINT):
            (missing if _incomplete(item, page_omitted) else complete).append(item)
        return complete + (self._refetch(missing) if missing else [])

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

    def _refetch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Re-request invoices the API left a selected field out of (`lines`, `erpData`, `price`);
        fail rather than load them without it (or quarantine them for what the API chose to omit)."""
        ids = [str(item.get("id")) for item in items]
        names = sorted({n for item in items for n in _missing(item, [])} or {"lines"})
        self.stats.count("omitted_refetched", len(ids))  # also from fetch_by_ids' workers
        log.warning("source '%s': API omitted %s for %d invoice(s); requesting them again",
                    self.name, ", ".join(repr(n) for n in names), len(ids))
        found: dict[str, dict[str, Any]] = {}
        last_missing: dict[str, list[str]] = {}
        for i in range(0, len(ids), REFETCH_CHUNK):
            chunk = ids[i : i + REFETCH_CHUNK]
            terms = ",".join(f'eq(id,"{invoice_id}")' for invoice_id in chunk)
            rql = terms if len(chunk) == 1 else f"or({terms})"
            body = self._get(rql, 0, len(chunk))
            page_omitted = _meta_omitted(body)
            for item in body["data"]:
                if not isinstance(item, dict):
                    continue
                if _incomplete(item, page_omitted):
                    last_missing[str(item.get("id"))] = _missing(item, page_omitted)
                else:
                    found[str(item.get("id"))] = item
        still = [invoice_id for invoice_id in ids if invoice_id not in found]
        if still:
            omitted = sorted({n for i in still for n in last_missing.get(i, names)})
            raise self.http.error(
                f"invoice(s) {', '.join(still[:10])}: the API omitted {', '.join(repr(n) for n in omitted)} "
                f"($meta.omitted) even when requested again with {SELECT}; refusing to load them without it",
                endpoint=ENDPOINT,
            )
        return [found[invoice_id] for invoice_id in ids]


    # -- per record --------------------------------------------------------------------------------
    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        invoice_id = payload.get("id")
        if invoice_id in (None, ""):
            raise MappingError("id: missing")
        return SourceRecord(str(invoice_id), last_modified(payload), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name)

    # -- lifecycle: specific invoices, the full id list -------------------------------------------
    def _by_ids_chunk(self, chunk: list[str]) -> list[dict[str, Any]]:
        terms = ",".join(f'eq(id,"{invoice_id}")' for invoice_id in chunk)
        return self._complete(self._get(terms if len(chunk) == 1 else f"or({terms})", 0, len(chunk)))

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


def _meta_omitted(body: dict[str, Any]) -> list[str]:
    meta = body.get("$meta")
    names = meta.get("omitted") if isinstance(meta, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []


def _missing(item: dict[str, Any], page_omitted: list[str]) -> list[str]:
    """The selected fields this item lacks: named in its own `$meta.omitted`, or (when it has no
    list of its own) in the page's; `lines` also when it is not an array. A field that is simply
    absent without being named as omitted is the invoice's own (the mapping judges it)."""
    own = item.get("$meta")
    own_list = own.get("omitted") if isinstance(own, dict) else None
    names = [str(n) for n in own_list] if isinstance(own_list, list) else page_omitted
    missing = [n for n in SELECTED if n in names]
    if "lines" not in missing and lines_missing(item):
        missing.append("lines")
    return missing


def _incomplete(item: dict[str, Any], page_omitted: list[str]) -> bool:
    return bool(_missing(item, page_omitted))
