"""SoftwareOne listing: one RQL call, every page of a query (paging.TotalsPaginator over
`$meta.pagination`), and invoices the API left a selected field out of (`$meta.omitted`) requested
again by id.

`Listings` is mixed into SoftwareOneSource (client.py), whose `http`, `stats`, `name`, `config`,
`page_size` and `page_retry_pause` it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from invoice_pipeline.sources.helpers import require_objects
from invoice_pipeline.sources.paging import PageGuard, TotalsPaginator
from invoice_pipeline.sources.softwareone.mapping import lines_missing

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


class Listings:
    """RQL pages and the re-request of incomplete invoices (mixed into SoftwareOneSource)."""

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

    def _by_ids_chunk(self, chunk: list[str]) -> list[dict[str, Any]]:
        terms = ",".join(f'eq(id,"{invoice_id}")' for invoice_id in chunk)
        return self._complete(self._get(terms if len(chunk) == 1 else f"or({terms})", 0, len(chunk)))


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
