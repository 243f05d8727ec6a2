"""Oracle OCC listings: the invoice list walked in id order (paging.HasMorePaginator's guards), the
probe of whether the tenant honours the list filter `q` (the list mode), and the re-poll of open
invoices at the cost of list pages.

`Listings` is mixed into OracleOccSource (client.py), whose `http`, `stats`, `name`, `config`,
`page_size`, `page_retry_pause`, `stored_fields`, `_mode` and `_detail` it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from typing import Any

from invoice_pipeline.errors import SourceError
from invoice_pipeline.sources.base import SourceRecord
from invoice_pipeline.sources.helpers import compare_stored, require_objects
from invoice_pipeline.sources.paging import HasMorePaginator, PageGuard

log = logging.getLogger("invoice_pipeline.oracle_occ")

LIST_PATH = "/ccstore/v1/selfservice/invoices"
PAGE_RETRIES = 2  # re-requests of a list page that ends the listing early, before failing the run
# List modes: the filter works, or the list alone (q refused with a 400, or q ignored).
FILTER = "filter"
LIST_ONLY_REFUSED = "list-only (q refused)"
LIST_ONLY_IGNORED = "list-only (q ignored)"
PROBE_Q = "LastUpdateDate>='2999-01-01T00:00:00Z'"  # matches nothing on a tenant that honours q
# Fields list items carry that change when an invoice does (compared with the stored version).
LIST_FIELDS = ("InvoiceBalanceAmount", "EnteredAmount", "InvoiceStatus", "DueDate")
RANGE_SPLIT_PAGES = 2  # re-poll: open ids further apart than this many pages of ids are listed apart
COMPARE_CHUNK = 500  # re-poll: listed invoices compared with the warehouse per query


class Listings:
    """The list walk, its mode and the list-based re-poll (mixed into OracleOccSource)."""

    def _page(self, params: dict[str, Any], count: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        body = self.http.request("GET", LIST_PATH, params=params).body
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise self.http.error("list response has no 'items' array", endpoint=f"GET {LIST_PATH}")
        items = require_objects(self.http, body["items"], f"list page at offset {params['offset']}", f"GET {LIST_PATH}")
        if count:
            self.stats.count("pages")  # re-poll walks run in parallel
        return body, items

    def _walk(self, q: str | None) -> Iterator[list[dict[str, Any]]]:
        """List items in id order (immutable), page by page, each page the items not seen before,
        with the guards of paging.HasMorePaginator (short pages, repeated pages, a shrinking list)."""
        def params(offset: int) -> dict[str, Any]:
            at = {"orderBy": "CustomerTransactionId:asc", "limit": self.page_size, "offset": offset,
                  "totalResults": "true"}
            return at if q is None else {**at, "q": q}

        guard = PageGuard(self.http, self.stats, log, f"GET {LIST_PATH}", retries=PAGE_RETRIES,
                          pause=self.page_retry_pause)
        return HasMorePaginator(guard).walk(
            lambda offset: self._page(params(offset)),
            lambda offset: f"GET {LIST_PATH}?{_query(params(offset))}",
            lambda item: _item_id(item) or "#" + repr(sorted(item.items())),  # no id: keyed by its content
        )

    def _filter_mode(self) -> str:
        """Whether the tenant honours the list filter `q` (FILTER), refuses it (400) or ignores it.

        `q` on this endpoint is our reading of Fusion's REST conventions, not something the
        self-service docs promise. One probe per run asks for invoices updated in the year 2999:
        an honouring tenant answers none, one that ignores `q` answers some, one that refuses it 400.
        """
        if self._mode is not None:
            return self._mode
        params = {"q": PROBE_Q, "limit": 1, "offset": 0}
        try:
            body, items = self._page(params, count=False)  # a probe, not a page of the listing
        except SourceError as exc:
            if exc.status != 400:
                raise
            self._mode = LIST_ONLY_REFUSED
            log.warning("source '%s': the list filter q was refused (%s); working from the list alone", self.name, exc)
        else:
            self._mode = LIST_ONLY_IGNORED if items else FILTER
            if items:
                log.warning("source '%s': the list filter q is ignored (q=%s returned invoices); working from the "
                            "list alone", self.name, PROBE_Q)
        self.stats.extra["list_mode"] = self._mode
        log.info("source '%s': list mode: %s", self.name, self._mode)
        return self._mode

    def repoll(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        """Re-poll of open invoices at the cost of list pages: list items carry InvoiceBalanceAmount
        and InvoiceStatus, so the list is read (filtered to the id ranges of these invoices, or whole
        in list-only mode) and the detail is fetched only of those whose list fields differ from the
        stored version (all of them when run without a warehouse), plus any not listed (a 404
        there is skipped: deletion reconciliation decides). customer_ids is not needed here."""
        yield from self.batches(self._repoll_records(ids))

    def _repoll_ids(self, wanted: set[str]) -> Iterator[str]:
        extra = self.stats.extra
        for key in ("repoll_listed", "repoll_changed", "repoll_unchanged", "repoll_not_listed"):
            extra.setdefault(key, 0)
        lookup = self.stored_fields
        workers = self.config.concurrency
        ranges = _id_ranges(wanted, self.page_size, workers) if self._filter_mode() == FILTER else None
        extra["repoll_list_walks"] = len(ranges) if ranges is not None else 1
        walks = ([f"CustomerTransactionId>={lo};CustomerTransactionId<={hi}" for lo, hi in ranges]
                 if ranges is not None else [None])
        left = set(wanted)

        def listed(q: str | None) -> list[dict[str, Any]]:
            """The list items of the wanted invoices in one walk (walks run in parallel)."""
            return [item for page in self._walk(q) for item in page if _item_id(item) in wanted]

        for found in self.parallel(listed, walks, "repoll-list"):
            for start in range(0, len(found), COMPARE_CHUNK):
                items = [item for item in found[start:start + COMPARE_CHUNK] if _item_id(item) in left]
                if not items:
                    continue
                left.difference_update(_item_id(item) for item in items)
                extra["repoll_listed"] += len(items)
                for invoice_id, state in compare_stored(lookup, [(_item_id(i), i) for i in items], LIST_FIELDS):
                    extra["repoll_unchanged" if state == "unchanged" else "repoll_changed"] += 1
                    if state != "unchanged":
                        yield invoice_id
        extra["repoll_not_listed"] += len(left)
        if left:
            log.info("source '%s': %d open invoices were not in the list; reading them directly", self.name, len(left))
        yield from sorted(left)

    def _repoll_records(self, ids: Collection[str]) -> Iterator[SourceRecord]:
        wanted = {str(i) for i in ids}
        for payload in self.parallel(self._detail, self._repoll_ids(wanted), "repoll", depth=4):
            if payload is None:
                continue
            self.stats.scanned += 1
            self.stats.kept += 1
            yield self.record_or_raw(payload)


def _query(params: dict[str, Any]) -> str:
    """The query string as a person reads it (no percent-encoding; it holds no secret)."""
    return "&".join(f"{key}={value}" for key, value in params.items())


def _id_ranges(ids: Collection[str], page_size: int, pieces: int = 1) -> list[tuple[int, int]] | None:
    """Numeric id ranges that cover these ids, split where two neighbours lie more than a few pages
    of ids apart (a gap of n ids holds at most n invoices: splitting there costs at most one page
    and saves the gap's pages), then the ranges holding the most ids halved until there are
    `pieces` (walked in parallel; each split costs at most one partial page) while a range holds
    more than a few pages of ids. None: an id is not numeric (list everything instead)."""
    if not ids or not all(i.isdigit() for i in ids):
        return None
    numbers = sorted(int(i) for i in ids)
    gap = RANGE_SPLIT_PAGES * page_size
    groups = [[numbers[0]]]
    for n in numbers[1:]:
        if n - groups[-1][-1] > gap:
            groups.append([n])
        else:
            groups[-1].append(n)
    while len(groups) < pieces:
        biggest = max(range(len(groups)), key=lambda k: len(groups[k]))
        group = groups[biggest]
        if len(group) < 4 * page_size:
            break
        half = len(group) // 2
        groups[biggest:biggest + 1] = [group[:half], group[half:]]
    return [(g[0], g[-1]) for g in groups]


def _item_id(item: dict[str, Any]) -> str:
    """A list item's CustomerTransactionId as text ("" when it has none)."""
    value = item.get("CustomerTransactionId")
    return "" if value in (None, "") else str(value)
