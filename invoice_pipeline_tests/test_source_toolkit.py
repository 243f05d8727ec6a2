"""The source toolkit on its own: TokenAuth (renew-if-current, expiry), the bounded ordered pool,
the paging guards, thread-safe stats, and the lifecycle methods every Source declares.

The clients' own tests (test_*_client.py, test_*_tenants.py) drive the same code against the
simulators; these pin each piece's contract where a simulator cannot make it happen on demand
(N threads failing with the same token at the same instant, a pool's exact bound)."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from invoice_pipeline.errors import PipelineError, SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError
from invoice_pipeline.source_types import known_types, source_class
from invoice_pipeline.sources.auth import TokenAuth
from invoice_pipeline.sources.base import ExtractStats, ordered_map
from invoice_pipeline.sources.helpers import compare_stored, require_objects
from invoice_pipeline.sources.mapping_kit import nested_object, object_list
from invoice_pipeline.sources.oracle_occ.client import OracleOccConfig
from invoice_pipeline.sources.paging import (HasMorePaginator, PageGuard, TotalsPaginator, UntilEmptyPaginator,
                                             WalkCounts)
from invoice_pipeline_tests.fake_source import FakeSource, fake_config_block

log = logging.getLogger("test_source_toolkit")


# -- TokenAuth ----------------------------------------------------------------------------------
class CountingAuth(TokenAuth):
    """Logs in by numbering tokens; a login takes a while, so racing threads really overlap."""

    def __init__(self, lifetime: float | None = None, login_time: float = 0.02):
        super().__init__(HttpClient("toolkit", "http://127.0.0.1:9"))
        self.lifetime, self.login_time = lifetime, login_time
        self.replaced_tokens: list[str] = []
        self.refreshes = 0

    def login(self) -> tuple[str, float | None]:
        time.sleep(self.login_time)
        return f"token-{self.logins + 1}", self.lifetime

    def refresh(self, token: str) -> tuple[str, float | None]:
        self.refreshes += 1
        return f"{token}+r", self.lifetime

    def replaced(self, token: str, issued: float) -> None:
        self.replaced_tokens.append(token)

    def decorate(self, headers: dict[str, str], params: dict[str, Any], token: str) -> None:
        headers["Authorization"] = f"Bearer {token}"


def sent(auth: TokenAuth) -> str:
    headers: dict[str, str] = {}
    auth.apply(headers, {})
    return headers["Authorization"].removeprefix("Bearer ")


def test_many_threads_rejected_with_the_same_token_log_in_once() -> None:
    auth = CountingAuth()
    threads, barrier, after = 16, threading.Barrier(16), []

    def worker() -> None:
        assert sent(auth) == "token-1"  # the first request of each thread: one lazy login between them
        barrier.wait()  # all hold the same token when the server rejects it
        auth.renew()
        after.append(sent(auth))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert auth.logins == 2  # the first login and ONE renewal, not 16
    assert after == ["token-2"] * threads


def test_a_thread_rejected_with_an_old_token_does_not_log_in_again() -> None:
    auth = CountingAuth(login_time=0)
    first = sent(auth)
    other = threading.Thread(target=lambda: (sent(auth), auth.renew()))  # this thread's token is current: renewed
    other.start()
    other.join()
    assert auth.logins == 2 and auth.token != first
    auth.renew()  # this thread last sent `first`, no longer current: someone renewed already
    assert auth.logins == 2
    assert sent(auth) == auth.token
    auth.renew()  # now the token it sent is current: a real renewal
    assert auth.logins == 3


def test_token_is_renewed_before_it_expires() -> None:
    auth = CountingAuth(lifetime=0.2, login_time=0)
    auth.RENEW_AT = 0.5  # due after 0.1 s
    assert sent(auth) == "token-1"
    assert sent(auth) == "token-1" and auth.refreshes == 0
    time.sleep(0.12)
    assert sent(auth) == "token-1+r"
    assert auth.refreshes == 1 and auth.logins == 1 and auth.replaced_tokens == ["token-1"]
    assert auth.secrets() == ["token-1+r"]


def test_idle_session_is_renewed_before_use() -> None:
    auth = CountingAuth(lifetime=None, login_time=0)
    auth.IDLE_LIMIT = 0.1
    assert sent(auth) == "token-1"
    for _ in range(4):  # used often enough: never idle, never renewed
        time.sleep(0.04)
        assert sent(auth) == "token-1"
    time.sleep(0.15)
    assert sent(auth) == "token-1+r" and auth.refreshes == 1


# -- ordered_map --------------------------------------------------------------------------------
def test_ordered_map_keeps_input_order_whatever_finishes_first() -> None:
    rng = random.Random(3)
    delays = [rng.uniform(0, 0.01) for _ in range(60)]

    def slow_square(n: int) -> int:
        time.sleep(delays[n])
        return n * n

    assert list(ordered_map(slow_square, range(60), 6, 12, "t")) == [n * n for n in range(60)]


def test_ordered_map_bounds_calls_in_flight_and_threads() -> None:
    pulled, consumed, lead, running, peak = [0], [0], [0], [0], [0]
    lock = threading.Lock()

    def items():
        for n in range(40):
            pulled[0] += 1
            lead[0] = max(lead[0], pulled[0] - consumed[0])
            yield n

    def work(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        return n

    for _ in ordered_map(work, items(), 3, 5, "t"):
        consumed[0] += 1
        time.sleep(0.002)  # a slow consumer: the producer must not run ahead
    assert consumed[0] == 40
    assert lead[0] <= 5  # never more than `depth` items taken but not yet consumed
    assert peak[0] <= 3  # never more than `workers` calls at once


def test_ordered_map_stops_workers_when_the_consumer_stops_early() -> None:
    stop, started = threading.Event(), []

    def work(n: int) -> int:
        started.append(n)
        stop.wait(2)  # a long call that returns early once told to stop
        return n

    t0 = time.monotonic()
    results = ordered_map(lambda n: n if n == 0 else work(n), range(100), 2, 4, "t", stop=stop)
    assert next(results) == 0
    results.close()
    assert stop.is_set()
    assert time.monotonic() - t0 < 1.5  # the running calls saw `stop`, nobody waited 2 s
    assert len(started) <= 4  # the queued ones were cancelled, the rest never submitted


def test_ordered_map_raises_a_failed_call_in_order() -> None:
    def fail_on_3(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n

    got = []
    with pytest.raises(ValueError, match="three"):
        for n in ordered_map(fail_on_3, range(10), 4, 8, "t"):
            got.append(n)
    assert got == [0, 1, 2]


# -- paging guards --------------------------------------------------------------------------------
def guard(retries: int = 2) -> tuple[PageGuard, ExtractStats]:
    stats = ExtractStats()
    return PageGuard(HttpClient("toolkit", "http://127.0.0.1:9"), stats, log, "GET /list", retries=retries,
                     pause=0), stats


def test_short_page_is_requested_again_until_whole() -> None:
    g, stats = guard()
    answers = iter([[1], [1, 2], [1, 2, 3]])
    page = g.full_page(lambda: next(answers), lambda p: None if len(p) == 3 else f"{len(p)} of 3", 0, "GET /list?x")
    assert page == [1, 2, 3] and stats.extra["pages_rerequested"] == 2


def test_short_page_still_short_after_the_retries_fails_naming_offset_and_url() -> None:
    g, stats = guard(retries=2)
    calls = []
    with pytest.raises(SourceError, match=r"ended early at offset 50: 1 of 3, still after 2 re-requests of "
                                          r"GET /list\?o=50"):
        g.full_page(lambda: calls.append(1) or [1], lambda p: f"{len(p)} of 3", 50, "GET /list?o=50")
    assert len(calls) == 3 and stats.extra["pages_rerequested"] == 2


def test_a_page_of_nothing_new_is_fatal_unless_the_set_grew_by_as_much() -> None:
    g, _ = guard()
    assert g.fresh(["a", "b"], str) == ["a", "b"]
    fresh = g.fresh(["a", "b"], str)
    g.check_repeat(2, len(fresh), 2, "GET /list?o=2", grown=2)  # two joined meanwhile: a shift, not a loop
    with pytest.raises(SourceError, match="repeated itself at offset 2.*ignore 'offset'"):
        g.check_repeat(2, len(fresh), 2, "GET /list?o=2", grown=1)


class HasMoreServer:
    """Oracle-style pages of 10: items, hasMore, totalResults; `after_first(items)` runs once after page one."""

    def __init__(self, n: int, after_first=None, ignores_offset: bool = False, empty_once_at: int | None = None):
        self.items = [{"id": str(i)} for i in range(n)]
        self.after_first, self.ignores_offset, self.empty_once_at = after_first, ignores_offset, empty_once_at
        self.offsets: list[int] = []

    def fetch(self, offset: int) -> tuple[dict[str, Any], list[Any]]:
        self.offsets.append(offset)
        start = 0 if self.ignores_offset else offset
        page = self.items[start:start + 10]
        if offset == self.empty_once_at:
            self.empty_once_at, page = None, []
        body = {"items": page, "hasMore": start + 10 < len(self.items), "totalResults": len(self.items)}
        if len(self.offsets) == 1 and self.after_first:
            self.after_first(self.items)
        return body, page


def has_more_walk(server: HasMoreServer) -> list[str]:
    g, _ = guard()
    pages = HasMorePaginator(g).walk(server.fetch, lambda offset: f"GET /list?offset={offset}", lambda i: i["id"])
    return [item["id"] for page in pages for item in page]


def test_has_more_steps_back_when_the_list_shrinks_while_paging() -> None:
    # "2" (already read) leaves after page one: "10" shifts back to offset 9, which page two (offset 10) skips.
    server = HasMoreServer(30, after_first=lambda items: items.pop(2))
    ids = has_more_walk(server)
    assert sorted(ids, key=int) == [str(i) for i in range(30)]  # "10" was not lost
    assert server.offsets == [0, 10, 9, 19]  # totalResults fell by one at offset 10: re-read from 9


def test_has_more_rerequests_an_empty_page_that_says_more_follow() -> None:
    server = HasMoreServer(30, empty_once_at=10)
    assert has_more_walk(server) == [str(i) for i in range(30)]
    assert server.offsets == [0, 10, 10, 20]


def test_has_more_fails_on_a_server_that_ignores_offset() -> None:
    with pytest.raises(SourceError, match="repeated itself at offset 10"):
        has_more_walk(HasMoreServer(30, ignores_offset=True))


def totals_walk(items: list[dict[str, Any]], on_fetch=None, max_restarts: int = 2) -> tuple[list[str], ExtractStats]:
    _, stats = guard()

    def fetch(offset: int, limit: int) -> dict[str, Any]:
        if on_fetch:
            on_fetch(offset, items)
        return {"data": items[offset:offset + min(limit, 10)], "total": len(items), "limit": min(limit, 10)}

    pager = TotalsPaginator(lambda: PageGuard(HttpClient("toolkit", "http://127.0.0.1:9"), stats, log, "GET /l",
                                              retries=1, pause=0),
                            workers=3, name="t", max_restarts=max_restarts, items_of=lambda b: b["data"],
                            total_of=lambda b: b["total"], limit_of=lambda b: b["limit"], key=lambda i: i["id"])
    pages = pager.pages(fetch, lambda offset, limit: f"GET /l?offset={offset}", 100)
    return [item["id"] for body in pages for item in body["data"]], stats


def test_totals_paginator_follows_a_total_that_grows() -> None:
    items = [{"id": str(i)} for i in range(25)]
    grown = []

    def grow(offset: int, items: list[dict[str, Any]]) -> None:
        if offset == 20 and not grown:  # the last page of the first total: five more joined meanwhile
            grown.append(1)
            items.extend({"id": str(i)} for i in range(25, 30))

    ids, stats = totals_walk(items, grow)
    assert ids == [str(i) for i in range(30)] and stats.expected_total == 25


def test_totals_paginator_restarts_a_shrinking_list_then_gives_up() -> None:
    items = [{"id": str(i)} for i in range(100)]

    def shrink(offset: int, items: list[dict[str, Any]]) -> None:
        if offset == 50:
            items.pop(0)

    with pytest.raises(SourceError, match="kept shrinking.*gave up after 2 restarts"):
        totals_walk(items, shrink)


class Server:
    """A list endpoint: `cap` items per page at most; `ignores_offset` answers from 0 whatever is asked;
    `glitch` offsets answer empty once."""

    def __init__(self, n: int, cap: int = 1000, ignores_offset: bool = False, glitch: tuple[int, ...] = ()):
        self.items = [{"id": str(i)} for i in range(n)]
        self.cap, self.ignores_offset, self.glitch = cap, ignores_offset, set(glitch)
        self.calls: list[tuple[int, int]] = []

    def fetch(self, params: dict[str, Any], what: str) -> list[Any]:
        limit, offset = params["limit"], params["offset"]
        self.calls.append((limit, offset))
        if offset in self.glitch:
            self.glitch.discard(offset)
            return []
        start = 0 if self.ignores_offset else offset
        return self.items[start:start + min(limit, self.cap)]


def walk(server: Server, pager: UntilEmptyPaginator) -> tuple[list[str], WalkCounts]:
    counts = WalkCounts()
    pages = pager.walk(server.fetch, {}, "invoices", "GET /list", counts, lambda item: item["id"])
    return [item["id"] for page in pages for item in page], counts


def pager(page_size: int = 10, max_whole_list: int = 1000) -> UntilEmptyPaginator:
    return UntilEmptyPaginator(HttpClient("toolkit", "http://127.0.0.1:9"), log, page_size=page_size,
                               max_whole_list=max_whole_list)


def test_until_empty_reads_past_short_pages_of_a_capped_server() -> None:
    server, p = Server(25, cap=4), pager()
    ids, counts = walk(server, p)
    assert ids == [str(i) for i in range(25)]  # a 4-item page is not the end
    assert p.server_cap == 4 and counts.pages == 8  # 7 pages of data, one empty


def test_until_empty_asks_an_empty_page_after_a_full_one_again() -> None:
    server, p = Server(30, glitch=(20,)), pager()
    ids, counts = walk(server, p)
    assert ids == [str(i) for i in range(30)]  # the glitch at 20 did not end the listing
    assert counts.empty_rechecked == 2 and counts.empty_not_end == 1  # at 20 (data after all) and at 30 (the end)


def test_until_empty_reads_whole_lists_from_a_server_that_ignores_offset() -> None:
    server, p = Server(25, ignores_offset=True), pager()
    ids, counts = walk(server, p)
    assert sorted(ids, key=int) == [str(i) for i in range(25)]
    assert p.offset_ignored and counts.offset_ignored == 1
    assert (40, 0) in server.calls  # asked for ever more from offset 0 until the answer was shorter


def test_until_empty_gives_up_at_the_hard_cap() -> None:
    server, p = Server(500, ignores_offset=True), pager(page_size=10, max_whole_list=160)
    with pytest.raises(SourceError, match="ignores offset and still returns 160 items when asked for 160"):
        walk(server, p)


# -- stats and the Source interface ---------------------------------------------------------------
def test_stats_count_loses_nothing_across_threads() -> None:
    stats = ExtractStats()

    def bump() -> None:
        for _ in range(5000):
            stats.count("pages")
            stats.count("detail_calls")

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.pages == 40000 and stats.extra["detail_calls"] == 40000


def test_source_without_lifecycle_methods_says_so() -> None:
    src = FakeSource("shop", OracleOccConfig(**fake_config_block()), [])
    with pytest.raises(PipelineError, match=r"source 'shop' \(fake\) cannot list its invoice ids"):
        src.list_ids(datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(PipelineError, match=r"source 'shop' \(fake\) cannot read specific invoices"):
        src.fetch_by_ids(["1"])


def test_each_config_model_names_its_credential_keys() -> None:
    for type_name in known_types():
        keys = source_class(type_name).config_model.credential_keys
        assert keys and all(k in source_class(type_name).config_model.model_fields for k in keys), type_name


# -- shared helpers -----------------------------------------------------------------------------
def test_nested_parts_are_objects_or_arrays_of_objects_else_the_record_is_unmappable() -> None:
    payload = {"customer": {"id": 1}, "lines": [{"n": 1}], "bad": "x", "mixed": [{"n": 1}, 7], "empty": None}
    assert nested_object(payload, "customer") == {"id": 1} and nested_object(payload, "empty") == {}
    assert object_list(payload, "lines") == [{"n": 1}] and object_list(payload, "missing") == []
    with pytest.raises(MappingError, match=r"invoice 7: bad: expected an object, got str"):
        nested_object(payload, "bad", "invoice 7: ")
    with pytest.raises(MappingError, match=r"mixed\[1\]: expected an object, got int"):
        object_list(payload, "mixed")


def test_compare_stored_tells_new_changed_and_unchanged_with_one_query() -> None:
    queries = []

    def lookup(ids, fields):
        queries.append(list(ids))
        return {"1": {"balance": "10.00", "status": "OPEN"}, "2": {"balance": "5", "status": "OPEN"}}

    read = [("1", {"balance": 10, "status": "OPEN"}), ("2", {"balance": "4.99", "status": "OPEN"}), ("3", {})]
    assert list(compare_stored(lookup, read, ("balance", "status"))) == [("1", "unchanged"), ("2", "changed"),
                                                                         ("3", "new")]
    assert queries == [["1", "2", "3"]]
    assert list(compare_stored(None, read, ("balance",))) == [("1", "new"), ("2", "new"), ("3", "new")]


def test_require_objects_names_the_offending_item() -> None:
    http = HttpClient("shop", "http://127.0.0.1:9")
    assert require_objects(http, [{"a": 1}], "page", "GET /l") == [{"a": 1}]
    with pytest.raises(SourceError, match=r"page at offset 50: item 1 is not an object: 'oops'"):
        require_objects(http, [{"a": 1}, "oops"], "page at offset 50", "GET /l")
