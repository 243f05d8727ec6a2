"""The guards of offset paging, shared by the clients (docs/SOURCES.md says which API needs which).

A listing is never cut short silently and never loops without end:
- `PageGuard.full_page`: a page that ends the listing before the API's own totals said it would is
  requested again (`retries` times, pausing `pause` x the attempt); still short, the run fails naming
  the offset and the URL.
- `PageGuard.fresh` / `PageGuard.check_repeat`: a page that brings no item not already listed (the
  server ignores `offset`) fails the run, unless the result set grew by at least that page meanwhile
  (joins shift later pages back: repeats, never skips).
- `UntilEmptyPaginator`: for APIs that give no totals and may cap a page below what was asked: read
  until an empty page, never stop at a short one; an empty page right after a full one is asked once
  more; a page repeating ids means `offset` is ignored, and the listing is then read as one ever
  bigger page (up to a hard cap) until an answer is shorter than asked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from invoice_pipeline.http import HttpClient
from invoice_pipeline.sources.pool import ordered_map

B = TypeVar("B")
Fetch = Callable[[dict[str, Any], str], list[Any]]  # (query parameters, what for messages) -> the page's items


def fresh_items(items: list[Any], seen: set[str], key: Callable[[Any], str]) -> list[Any]:
    """The items whose key is not in `seen` (first copy only), added to it."""
    new = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            new.append(item)
    return new


class PageGuard:
    """The guards of one listing (one walk): ids seen so far, short pages, repeated pages.

    `stats` is the source's ExtractStats (re-requests are counted through its locked `count()`)."""

    def __init__(self, http: HttpClient, stats: Any, log: logging.Logger, endpoint: str, *,
                 retries: int = 2, pause: float = 0.5):
        self.http, self.stats, self.log, self.endpoint = http, stats, log, endpoint
        self.retries, self.pause = retries, pause
        self.seen: set[str] = set()

    def full_page(self, fetch: Callable[[], B], short: Callable[[B], str | None], offset: int, url: str,
                  body: B | None = None) -> B:
        """fetch() (or `body`, already fetched) until short(body) finds nothing wrong, at most
        `retries` re-requests; short() says why a page ends the listing early, or None."""
        body = fetch() if body is None else body
        tries = 0
        while (why := short(body)) is not None:
            if tries >= self.retries:
                raise self.http.error(
                    f"the invoice list ended early at offset {offset}: {why}, still after {tries} re-requests of "
                    f"{url}; refusing to treat it as the end of the list (invoices would be lost). The cursor was "
                    "not moved; re-run when the API answers consistently.", endpoint=self.endpoint,
                )
            tries += 1
            self.stats.count("pages_rerequested")
            self.log.warning("source '%s': the page at offset %d ends early: %s (%s); requesting it again (%d/%d)",
                             self.http.source, offset, why, url, tries, self.retries)
            time.sleep(self.pause * tries)
            body = fetch()
        return body

    def fresh(self, items: list[Any], key: Callable[[Any], str]) -> list[Any]:
        """The items whose key was not listed before in this walk (and remember them)."""
        return fresh_items(items, self.seen, key)

    def check_repeat(self, listed: int, new: int, offset: int, url: str, grown: int = 0) -> None:
        """Fail on a page of `listed` items of which none is new, unless the set grew by at least as
        many meanwhile (`grown`): the API ignores `offset`, and paging on would never end."""
        if listed and not new and grown < listed:
            raise self.http.error(
                f"the invoice list repeated itself at offset {offset}: the page {url} holds no invoice not "
                "already listed (the API seems to ignore 'offset'); stopping rather than paging forever or "
                "loading the same page again. The cursor was not moved.", endpoint=self.endpoint,
            )


@dataclass
class WalkCounts:
    """Counts of paged listings: what an operator needs to see that nothing was cut short."""

    pages: int = 0
    rows: int = 0  # items the server returned, repeats included
    new: int = 0  # distinct ids among them
    empty_rechecked: int = 0  # empty pages after a full one, asked again
    empty_not_end: int = 0  # of which the second answer brought data
    offset_ignored: int = 0  # listings where a page repeated ids already seen

    def add(self, other: WalkCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class UntilEmptyPaginator:
    """Offset/limit paging read until an empty page, for one run (what it learns holds for the run).

    Learned from the server (plain fields: a race between workers only costs a call): `server_cap`,
    a page size below what we ask, seen mid-listing; `largest_page`; `offset_ignored`, set once a
    page repeated ids (later listings start with the whole-list read)."""

    def __init__(self, http: HttpClient, log: logging.Logger, *, page_size: int, max_whole_list: int,
                 limit_param: str = "limit", offset_param: str = "offset"):
        self.http, self.log = http, log
        self.page_size, self.max_whole_list = page_size, max_whole_list
        self.limit_param, self.offset_param = limit_param, offset_param
        self.server_cap: int | None = None
        self.largest_page = 0
        self.offset_ignored = False
        self.totals = WalkCounts()  # every listing of the run, summed
        self._lock = threading.Lock()

    def add(self, counts: WalkCounts) -> None:
        with self._lock:
            self.totals.add(counts)

    def walk(self, fetch: Fetch, params: dict[str, Any], what: str, endpoint: str, counts: WalkCounts,
             key: Callable[[Any], str]) -> Iterator[list[Any]]:
        """Every item of one listing, as lists of items not seen before (one list per page)."""
        walk = _Walk(self, fetch, params, what, endpoint, counts, key)
        if self.offset_ignored:
            yield from walk.whole_list(self.page_size)
        else:
            yield from walk.paged(0, on_repeat="whole_list")


@dataclass
class _Walk:
    run: UntilEmptyPaginator
    fetch: Fetch
    params: dict[str, Any]
    what: str
    endpoint: str
    counts: WalkCounts
    key: Callable[[Any], str]

    def __post_init__(self) -> None:
        self.seen: set[str] = set()

    def _ask(self, size: int, offset: int, what: str) -> list[Any]:
        run = self.run
        page = self.fetch({**self.params, run.limit_param: size, run.offset_param: offset}, what)
        self.counts.pages += 1
        self.counts.rows += len(page)
        return page

    def _fresh(self, page: list[Any]) -> list[Any]:
        fresh = fresh_items(page, self.seen, self.key)
        self.counts.new += len(fresh)
        return fresh

    def paged(self, offset: int, on_repeat: Literal["whole_list", "end"]) -> Generator[list[Any], None, str]:
        """Pages from `offset` until an empty page (never stops at a short one: servers cap pages
        below what is asked). An empty page right after a full one (as long as asked, or as the
        longest page of the run: the server's cap, which we may not know yet) is asked once more
        before it is believed: a glitch there would otherwise end the listing silently. A page that
        brings no new id means the server ignores `offset`: whole_list takes over (or, when this
        walk checks a whole list, the list is complete). Every call brings a new id or ends the walk."""
        run, size = self.run, self.run.page_size
        prev_len, rechecked = 0, False
        while True:
            page = self._ask(size, offset, f"{self.what} at offset {offset}")
            if not page:
                if prev_len and prev_len >= min(size, run.largest_page) and not rechecked:
                    rechecked = True
                    self.counts.empty_rechecked += 1
                    continue
                return "empty"
            if rechecked:
                self.counts.empty_not_end += 1
                run.log.warning("source '%s': %s: an empty page at offset %d was not the end (asked again: %d items)",
                                run.http.source, self.what, offset, len(page))
            fresh = self._fresh(page)
            if not fresh:  # the same items again: the server ignores offset
                if on_repeat == "end":
                    return "repeat"
                self.counts.offset_ignored += 1
                if not run.offset_ignored:
                    run.offset_ignored = True
                    run.log.warning("source '%s': %s: the page at offset %d repeats ids already read: the server "
                                    "ignores offset; reading whole lists instead", run.http.source, self.what, offset)
                yield from self.whole_list(size, page)
                return "repeat"
            if prev_len and prev_len < size and (run.server_cap or 0) < prev_len:
                run.server_cap = prev_len  # a short page that was not the last: the server's cap
            if len(page) > run.largest_page:
                run.largest_page = len(page)
            yield fresh
            offset += len(page)
            prev_len, rechecked = len(page), False

    def whole_list(self, size: int, repeated: list[Any] | None = None) -> Iterator[list[Any]]:
        """A listing from a server that ignores `offset` (it returns every item, whatever is asked):
        ask from offset 0 for ever more (x4 each time, up to max_whole_list) until an answer is
        shorter than asked, or longer (the limit ignored too). When that answer is at least a page
        long, the next offset is asked once: a server that honours offset after all (a misjudged
        repeat) then goes on being paged, so a cap is never taken for the end. An answer exactly as
        long as the page cap this run has seen fails the run (cut by that cap)."""
        run = self.run
        asked, answer = size, repeated
        while answer is None or len(answer) == size:
            if answer is not None:
                if size >= run.max_whole_list:
                    raise run.http.error(f"{self.what}: the server ignores offset and still returns {len(answer)} "
                                         f"items when asked for {size}: the list cannot be read to its end",
                                         endpoint=self.endpoint)
                size = min(size * 4, run.max_whole_list)
            answer = self._ask(size, 0, f"{self.what} (whole list)")
            fresh = self._fresh(answer)
            if fresh:
                yield fresh
        if len(answer) > size:
            return  # more than asked: the server ignores the limit as well, this is everything
        at_cap = bool(run.server_cap) and len(answer) == run.server_cap
        if not at_cap and not (len(answer) >= asked and size > asked):
            return  # shorter than the first page asked: nothing suggests a cut
        ended = yield from self.paged(len(answer), on_repeat="end")
        if at_cap and ended == "repeat":
            raise run.http.error(f"{self.what}: the server ignores offset and its answer holds exactly {len(answer)} "
                                 "items, the page cap it showed in this run: the rest of the list cannot be read",
                                 endpoint=self.endpoint)


class HasMorePaginator:
    """Offset/limit paging where every page says whether more follow (`hasMore`) and how many the
    listing holds (`totalResults`, optional), in an immutable order (joins and leaves are the only
    way items move). Guards:
    - a page that ends the listing before `hasMore`/`totalResults` said it would is requested again
      (PageGuard.full_page); still short, the run fails naming the URL and offset;
    - a page without a single new item (the API ignores `offset`) fails the run, unless the total
      grew by at least a page meanwhile or the walk just stepped back;
    - a result set that shrank between two pages (`totalResults` fell: an item left, shifting later
      ones back) is re-read from `offset - shrink`.
    """

    def __init__(self, guard: PageGuard, *, has_more: str = "hasMore", total: str = "totalResults"):
        self.guard, self.has_more, self.total = guard, has_more, total

    def _ends_early(self, body: dict[str, Any], items: list[Any], offset: int) -> str | None:
        """Why this page ends the listing before the API itself said it would, or None."""
        total = body.get(self.total)
        if not items and body.get(self.has_more):
            return f"an empty page (items: []) that says {self.has_more}: true"
        if not body.get(self.has_more) and isinstance(total, int) and offset + len(items) < total:
            return f"the last page ({self.has_more}: false) ends at {offset + len(items)} of {self.total} {total}"
        return None

    def walk(self, fetch: Callable[[int], tuple[dict[str, Any], list[Any]]], url: Callable[[int], str],
             key: Callable[[Any], str]) -> Iterator[list[Any]]:
        """The items not seen before, page by page; fetch(offset) -> (body, items)."""
        guard, stats = self.guard, self.guard.stats
        offset, prev_total, after_step_back = 0, None, False
        while True:
            body, items = guard.full_page(lambda: fetch(offset), lambda page: self._ends_early(*page, offset),
                                          offset, url(offset))
            fresh = guard.fresh(items, key)
            stats.extra["ids_listed"] = len(guard.seen)
            total = body.get(self.total) if isinstance(body.get(self.total), int) else None
            grew = total - prev_total if total is not None and prev_total is not None else 0
            guard.check_repeat(len(items), len(fresh), offset, url(offset), len(items) if after_step_back else grew)
            if fresh:
                yield fresh
            shrink = prev_total - total if total is not None and prev_total is not None and total < prev_total else 0
            prev_total = total if total is not None else prev_total
            after_step_back = shrink > 0
            if shrink:
                stats.count("list_step_backs")
                guard.log.info("source '%s': the list shrank by %d while paging; re-reading from offset %d",
                               guard.http.source, shrink, max(0, offset - shrink))
                offset = max(0, offset - shrink)
                continue
            if not body.get(self.has_more):
                return
            offset += len(items)


class Shrunk(Exception):
    """The result set lost items while we paged: later pages may have shifted past us."""


class TotalsPaginator:
    """Offset/limit paging where every page states the listing's total and the limit the server
    really used, in an immutable order. The first page tells both; the rest are fetched in parallel
    (ordered_map, bounded by `workers`), and a total that grew meanwhile extends the walk. Guards:
    - a page short of its own total (fewer than min(limit, total - offset) items) is requested
      again (PageGuard.full_page); still short, the run fails;
    - a page without a new id fails the run (the API ignores `offset`), unless the set grew by at
      least a page meanwhile (joins shift later pages back: repeats, never skips);
    - a total that fell (a deletion shifts later items back past pages already read) restarts the
      walk from the start, at most `max_restarts` times, then fails; the caller drops repeated ids;
    - without a total the walk is sequential until a short page.
    `total_of(body)` / `limit_of(body)` read the page's metadata (None when absent); `items_of(body)`
    its items.
    """

    def __init__(self, guard_for: Callable[[], PageGuard], *, workers: int, name: str, max_restarts: int,
                 items_of: Callable[[Any], list[Any]], total_of: Callable[[Any], int | None],
                 limit_of: Callable[[Any], int | None], key: Callable[[Any], str], meta: str = "totals"):
        self.guard_for, self.workers, self.name, self.max_restarts = guard_for, workers, name, max_restarts
        self.items_of, self.total_of, self.limit_of, self.key = items_of, total_of, limit_of, key
        self.meta = meta  # what the page's totals are called, for messages

    def _short(self, body: Any, offset: int, limit: int) -> str | None:
        total, used = self.total_of(body), self.limit_of(body)
        used = used if used is not None and 0 < used < limit else limit  # the server's cap may be below ours
        want = min(used, total - offset) if total is not None else 0
        got = len(self.items_of(body))
        if got >= want:
            return None
        return f"the page holds {got} invoices where its {self.meta} (total {total}, limit {limit}) promises {want}"

    def pages(self, fetch: Callable[[int, int], Any], url: Callable[[int, int], str], page_size: int) -> Iterator[Any]:
        """All pages, in order, each checked; fetch(offset, limit) -> body."""
        restarts = 0
        while True:
            guard = self.guard_for()
            try:
                yield from self._walk(guard, fetch, url, page_size)
                return
            except Shrunk as exc:
                restarts += 1
                guard.stats.extra["list_restarts"] = restarts
                if restarts > self.max_restarts:
                    raise guard.http.error(
                        f"the invoice list kept shrinking while it was read ({exc}); gave up after "
                        f"{self.max_restarts} restarts rather than risk skipping invoices. The cursor was not moved.",
                        endpoint=guard.endpoint,
                    ) from None
                guard.log.warning("source '%s': the invoice list shrank while paging (%s); reading it again",
                                  guard.http.source, exc)

    def _walk(self, guard: PageGuard, fetch: Callable[[int, int], Any], url: Callable[[int, int], str],
              page_size: int) -> Iterator[Any]:
        stats = guard.stats

        def full(offset: int, limit: int, body: Any = None) -> Any:
            return guard.full_page(lambda: fetch(offset, limit), lambda page: self._short(page, offset, limit),
                                   offset, url(offset, limit), body)

        def checked(body: Any, offset: int, limit: int, grown: int) -> Any:
            keys = [self.key(item) for item in self.items_of(body) if isinstance(item, dict)]
            fresh = guard.fresh(keys, str)
            stats.extra["ids_listed"] = len(guard.seen)
            guard.check_repeat(len(keys), len(fresh), offset, url(offset, limit), grown)
            return body

        first = full(0, page_size)
        first_items = self.items_of(first)
        limit = self.limit_of(first)
        step = limit if limit is not None and limit > 0 else len(first_items)
        total = first_total = self.total_of(first)
        stats.expected_total = total  # progress lines show % done and an ETA
        yield checked(first, 0, page_size, 0)
        if not first_items or step <= 0:
            return
        if total is None:  # no totals: sequential until a short or empty page
            stats.extra["pagination_metadata"] = False
            offset = len(first_items)
            while True:
                body = checked(fetch(offset, step), offset, step, 0)
                yield body
                if len(self.items_of(body)) < step:
                    return
                offset += len(self.items_of(body))
        next_offset = step

        def offsets() -> Iterator[int]:  # read lazily: a total that grows extends it
            nonlocal next_offset
            while next_offset < total:
                yield next_offset
                next_offset += step

        while next_offset < total:  # again when the total grew after the last offset was handed out
            with closing(ordered_map(lambda at: (at, fetch(at, step)), offsets(), self.workers, self.workers * 2,
                                     self.name)) as results:
                for offset, body in results:
                    body = full(offset, step, body)
                    new_total = self.total_of(body)
                    if new_total is not None and new_total < total:
                        raise Shrunk(f"total {total} fell to {new_total} at offset {offset}")
                    if new_total is not None and new_total > total:
                        total = new_total
                    yield checked(body, offset, step, total - first_total)
