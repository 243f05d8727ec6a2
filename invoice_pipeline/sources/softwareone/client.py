"""SoftwareOne Marketplace billing invoices (SPEC 2.3): bearer token, raw RQL, $meta offset paging."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import SecretStr

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.http import Auth, HttpClient
from invoice_pipeline.money import MappingError
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window, batched, ordered_map
from invoice_pipeline.sources.softwareone.mapping import last_modified, lines_missing, map_invoice

log = logging.getLogger("invoice_pipeline.softwareone")

LIST_PATH = "/public/v1/billing/invoices"
ENDPOINT = f"GET {LIST_PATH}"
SELECT = "select=audit,+lines"  # audit is needed to filter/order on it; lines are left out unless asked
# Immutable sort keys: invoices joining the result set mid-run (updated meanwhile) shift later
# pages by one, which repeats a record but never skips one.
ORDER = "order=+audit.created.at,+id"
REFETCH_CHUNK = 20  # ids per or(eq(id,..),...) re-request


class SoftwareOneConfig(SourceConfig):
    type: Literal["softwareone"]
    api_token: SecretStr


class ApiTokenAuth(Auth):
    """A long-lived API token: nothing to renew, so a 401 is repeated once (http layer) then fatal."""

    def __init__(self, token: SecretStr):
        self._token = token

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"

    def secrets(self) -> list[str]:
        return [self._token.get_secret_value()]


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

    def __init__(self, name: str, config: SoftwareOneConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.http.auth = ApiTokenAuth(config.api_token)

    # -- HTTP ----------------------------------------------------------------------------------
    def _validate(self, status: int, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise self.http.error("response has no 'data' array", endpoint=ENDPOINT, status=status)

    def _get(self, rql: str, offset: int, limit: int) -> dict[str, Any]:
        query = f"{rql}&{SELECT}&{ORDER}&limit={limit}&offset={offset}"
        body = self.http.request("GET", LIST_PATH, raw_query=query, validate=self._validate).body
        self.stats.pages += 1
        return body

    @staticmethod
    def _pagination(body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("$meta")
        pag = meta.get("pagination") if isinstance(meta, dict) else None
        return pag if isinstance(pag, dict) else {}

    def _pages(self, rql: str) -> Iterator[dict[str, Any]]:
        """All pages of a query, in order. The first page tells the total and the limit the
        server really used (capped at 100); the rest are fetched in parallel, bounded by
        `concurrency`. A total that grew meanwhile extends the walk; an empty page ends it."""
        first = self._get(rql, 0, self.page_size)
        yield first
        pag = self._pagination(first)
        step = pag.get("limit") if isinstance(pag.get("limit"), int) and pag.get("limit") > 0 else len(first["data"])
        total = pag.get("total") if isinstance(pag.get("total"), int) else None
        self.stats.expected_total = total  # progress lines show % done and an ETA
        if not first["data"] or step <= 0:
            return
        if total is None:  # no pagination block: walk sequentially until a short or empty page
            offset = len(first["data"])
            while True:
                body = self._get(rql, offset, step)
                yield body
                if len(body["data"]) < step:
                    return
                offset += len(body["data"])
        next_offset, inflight = step, deque[tuple[int, Future]]()
        workers = self.config.concurrency
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-page") as pool:
            try:
                while True:
                    while next_offset < total and len(inflight) < workers * 2:
                        inflight.append((next_offset, pool.submit(self._get, rql, next_offset, step)))
                        next_offset += step
                    if not inflight:
                        return
                    offset, future = inflight.popleft()
                    body = future.result()
                    yield body
                    new_total = self._pagination(body).get("total")
                    if isinstance(new_total, int) and new_total > total:
                        total = new_total
                    if not body["data"]:  # the set shrank under us: nothing further
                        total = min(total, offset)
            finally:
                for _, f in inflight:
                    f.cancel()

    # -- extraction ------------------------------------------------------------------------------
    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        yield from batched(self._window_records(window), self.config.batch_size)
        self.stats.progress(self.name, force=True)

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        """The window's records, page by page (a page is taken whole before any of it is yielded)."""
        seen: set[str] = set()
        for body in self._pages(window_filter(window)):
            page_omits_lines = "lines" in _meta_omitted(body)
            complete, missing = [], []
            for item in body["data"]:
                if not isinstance(item, dict):
                    raise self.http.error(f"list item is not an object: {str(item)[:80]}", endpoint=ENDPOINT)
                self.stats.scanned += 1
                (missing if _incomplete(item, page_omits_lines) else complete).append(item)
            if missing:
                complete += self._refetch(missing)
            fresh: list[SourceRecord] = []
            for item in complete:
                record = self.record_or_raw(item)
                if record.invoice_id in seen:
                    continue
                seen.add(record.invoice_id)
                fresh.append(record)
                self.stats.kept += 1
            yield from fresh
            self.stats.progress(self.name)

    def _refetch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Re-request invoices whose `lines` the API omitted; fail rather than load them line-less."""
        ids = [str(item.get("id")) for item in items]
        self.stats.extra["lines_refetched"] = self.stats.extra.get("lines_refetched", 0) + len(ids)
        log.warning("source '%s': API omitted 'lines' for %d invoice(s); requesting them again", self.name, len(ids))
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), REFETCH_CHUNK):
            chunk = ids[i : i + REFETCH_CHUNK]
            terms = ",".join(f'eq(id,"{invoice_id}")' for invoice_id in chunk)
            rql = terms if len(chunk) == 1 else f"or({terms})"
            body = self._get(rql, 0, len(chunk))
            page_omits_lines = "lines" in _meta_omitted(body)
            for item in body["data"]:
                if isinstance(item, dict) and not _incomplete(item, page_omits_lines):
                    found[str(item.get("id"))] = item
        still = [invoice_id for invoice_id in ids if invoice_id not in found]
        if still:
            raise self.http.error(
                f"invoice(s) {', '.join(still[:10])}: the API omitted 'lines' ($meta.omitted) even when "
                f"requested again with {SELECT}; refusing to load them without their lines",
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
        body = self._get(terms if len(chunk) == 1 else f"or({terms})", 0, len(chunk))
        page_omits_lines = "lines" in _meta_omitted(body)
        complete, missing = [], []
        for item in body["data"]:
            if not isinstance(item, dict):
                raise self.http.error(f"list item is not an object: {str(item)[:80]}", endpoint=ENDPOINT)
            (missing if _incomplete(item, page_omits_lines) else complete).append(item)
        return complete + (self._refetch(missing) if missing else [])

    def fetch_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        """Current version of these invoices: RQL or(eq(id,..)) chunks of REFETCH_CHUNK, with lines;
        ids the API no longer knows are simply absent. customer_ids is not needed here."""
        yield from batched(self._records_by_ids(ids), self.config.batch_size)

    def _records_by_ids(self, ids: Collection[str]) -> Iterator[SourceRecord]:
        wanted = sorted(set(ids))
        wanted_set = set(wanted)
        chunks = [wanted[i : i + REFETCH_CHUNK] for i in range(0, len(wanted), REFETCH_CHUNK)]
        workers = self.config.concurrency
        for items in ordered_map(self._by_ids_chunk, chunks, workers, workers * 2, f"{self.name}-byid"):
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
        offset = 0
        while True:
            query = f"{rql}&select=audit&{ORDER}&limit={self.page_size}&offset={offset}"
            body = self.http.request("GET", LIST_PATH, raw_query=query, validate=self._validate).body
            self.stats.pages += 1
            data = body["data"]
            for item in data:
                invoice_id = item.get("id") if isinstance(item, dict) else None
                if invoice_id in (None, ""):
                    raise self.http.error(f"list item without id at offset {offset}", endpoint=ENDPOINT)
                ids.add(str(invoice_id))
            self.stats.scanned += len(data)
            total = self._pagination(body).get("total")
            offset += len(data)
            if not data or (isinstance(total, int) and offset >= total):
                return ids


def _meta_omitted(body: dict[str, Any]) -> list[str]:
    meta = body.get("$meta")
    names = meta.get("omitted") if isinstance(meta, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []


def _incomplete(item: dict[str, Any], page_omits_lines: bool) -> bool:
    """An item lacks its lines if it says so, has no `lines` array, or the page says lines were
    omitted and the item carries no `$meta.omitted` of its own to tell it apart."""
    if lines_missing(item):
        return True
    own = item.get("$meta")
    return page_omits_lines and not (isinstance(own, dict) and isinstance(own.get("omitted"), list))
