"""CRM.COM Web API (SPEC 2.2): token login, every accounts receivable, client-side incremental filter.

The API has no date filter and lists invoices only per accounts receivable, so a run pages the
AR list, pages every AR's invoices (in parallel, bounded by `concurrency`) and keeps those whose
naive `log_information.updated_date`, read in the tenant's `timezone`, falls inside the window.

Paging (docs/SOURCES.md, "crmcom"): `number_of_results`/`offset` exist from R13 only and a
server may cap a page below what was asked, so a listing is read until an empty page, never stopped
at a short one; an empty page right after a full one is asked once more before it is believed; a
page that brings no id not seen before means the server ignores `offset` (pre-R13), and the walk
then asks for bigger pages from offset 0 until an answer is shorter than asked (complete) or fails.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr, field_validator

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.errors import AuthExpired, SourceError
from invoice_pipeline.http import Auth, HttpClient, Validator
from invoice_pipeline.money import MappingError, to_text, to_timestamp
from invoice_pipeline.timeutil import wall_time_readings
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window, batched, ordered_map
from invoice_pipeline.sources.crmcom.mapping import map_invoice

log = logging.getLogger("invoice_pipeline.crmcom")

AR_PATH = "/accounts_receivable/list"
INVOICES_PATH = "/invoices/list"
MAX_PAGE = 500  # a page size we never ask beyond in normal paging (servers cap silently anyway)
MAX_WHOLE_LIST = 100_000  # the largest number_of_results asked of a server that ignores offset
AR_STATES = ("ACTIVE", "SUSPENDED", "TERMINATED")  # documented life_cycle_state values of an AR
# Wider than any zone's DST shift (2 h at most): only timestamps this close to the window's edges
# can have a second reading inside it, so only they are read twice.
DST_MARGIN = timedelta(hours=3)


class CrmcomConfig(SourceConfig):
    type: Literal["crmcom"]
    username: str
    password: SecretStr
    organisation: str
    timezone: str = "UTC"  # zone of the API's naive timestamps
    currency: str = "USD"  # for invoices without currency_rate_period

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"not a known IANA time zone: {value!r} (e.g. UTC, Europe/Nicosia)") from None
        return value

    @field_validator("currency")
    @classmethod
    def _currency_code(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"not an ISO 4217 currency code: {value!r} (e.g. USD, EUR)")
        return value


def status_validator(http: HttpClient, endpoint: str, what: str) -> Validator:
    """Every CRM.COM body has `status`; a code other than OK is an error even with HTTP 200."""

    def validate(status: int, body: Any) -> None:
        st = body.get("status") if isinstance(body, dict) else None
        if not isinstance(st, dict):
            raise http.error(f"{what}: response has no 'status' object", endpoint=endpoint, status=status)
        code = st.get("code")
        if code == "OK":
            return
        detail = st.get("message") or st.get("description") or ""
        if code == "INVALID_TOKEN":  # normally sent with HTTP 401; renew and repeat once either way
            raise AuthExpired(f"INVALID_TOKEN {detail}".strip())
        raise http.error(f"{what}: API error {code}: {detail}".rstrip(": "), endpoint=endpoint, status=status)

    return validate


class CrmTokenAuth(Auth):
    """Token from POST authentication/token, sent as the `token` query parameter.

    Tokens live 2 hours and cannot be refreshed: a new one is obtained at RENEW_AT of that life,
    and once after INVALID_TOKEN. Tokens are released (token/release) at the end of the run.
    """

    RENEW_AT = 0.9

    def __init__(self, http: HttpClient, username: str, password: str, organisation: str, lifetime: float = 7200.0):
        self._http = http
        self._credentials = {"username": username, "password": password, "organisation": organisation}
        self.lifetime = lifetime
        self._token: str | None = None
        self._renew_after = 0.0
        self._issued = 0.0
        self._retired: list[tuple[str, float]] = []  # (token, issued) replaced before expiry: released at the end
        self._releasing: list[str] = []
        self._lock = threading.Lock()
        self._local = threading.local()  # the token this thread last sent (see renew)
        self.logins = 0

    def _login(self) -> None:
        endpoint = "POST /authentication/token"
        what = f"login of user {self._credentials['username']!r} to organisation {self._credentials['organisation']!r}"
        body = self._http.request(
            "POST", "/authentication/token", json=self._credentials, use_auth=False,
            validate=status_validator(self._http, endpoint, what),
        ).body
        token = body.get("data", {}).get("token") if isinstance(body.get("data"), dict) else None
        if not token:
            raise self._http.error(f"{what}: answered without data.token", endpoint=endpoint)
        self._token = str(token)
        self._issued = time.monotonic()
        self._renew_after = self._issued + self.lifetime * self.RENEW_AT
        self.logins += 1

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        with self._lock:
            if self._token is None:
                self._login()
            elif time.monotonic() >= self._renew_after:
                self._retired.append((self._token, self._issued))
                self._login()
            token = self._token
        self._local.token = token
        params["token"] = token

    def renew(self) -> None:
        failed = getattr(self._local, "token", None)
        with self._lock:
            # Parallel workers all see the expiry: only the first logs in again, the rest reuse its token.
            if self._token is None or self._token == failed:
                self._login()

    def secrets(self) -> list[str]:
        return [t for t in (self._token, *(t for t, _ in self._retired), *self._releasing) if t]

    def close(self) -> None:
        """Release every token still valid; failures are logged, never raised (a run may be failing already)."""
        with self._lock:
            alive = time.monotonic() - self.lifetime
            tokens = [t for t, issued in self._retired if issued > alive] + ([self._token] if self._token else [])
            self._token, self._retired, self._releasing = None, [], tokens
        for token in tokens:
            try:
                self._http.request(
                    "POST", "/authentication/token/release", json={"token": token}, use_auth=False,
                    validate=status_validator(self._http, "POST /authentication/token/release", "token release"),
                )
            except SourceError as exc:
                log.warning("source '%s': could not release a token: %s", self._http.source, exc)
        self._releasing = []


@dataclass
class _Walk:
    """Counts of one paged listing: what an operator needs to see that nothing was cut short."""

    pages: int = 0
    rows: int = 0  # items the server returned, repeats included
    new: int = 0  # distinct ids among them
    empty_rechecked: int = 0  # empty pages after a full one, asked again
    empty_not_end: int = 0  # of which the second answer brought data
    offset_ignored: int = 0  # listings where a page repeated ids already seen


@dataclass
class _AccountResult:
    """What one worker found in one AR's invoices (merged into the stats by the calling thread)."""

    account_id: str
    walk: _Walk = field(default_factory=_Walk)
    pages: int = 0
    scanned: int = 0
    outside: int = 0
    undated: int = 0
    records: list[SourceRecord] = field(default_factory=list)


class CrmcomSource(Source):
    type_name = "crmcom"
    key_field = "id"
    config_model = CrmcomConfig
    default_page_size = 200
    has_installments = False

    def __init__(self, name: str, config: CrmcomConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.config: CrmcomConfig = config
        self.auth = CrmTokenAuth(
            self.http, config.username, config.password.get_secret_value(), config.organisation
        )
        self.http.auth = self.auth
        # Learned from the server during a run (plain flags: a race only costs a call).
        self._server_cap: int | None = None  # a page size below what we ask, seen mid-listing
        self._largest_page = 0  # the longest page any listing of this run has returned
        self._offset_ignored = False  # a page repeated ids: later listings start with the whole-list read
        self._ar_filter_required: bool | None = None  # None = not tried; True = list ARs per life_cycle_state
        self._walk_lock = threading.Lock()
        self.walks = _Walk()  # every listing of the run, summed (logged at the end)

    @property
    def page_size(self) -> int:
        return min(super().page_size, MAX_PAGE)

    # -- paging ----------------------------------------------------------------------------
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

    def _walk(self, path: str, params: dict[str, Any], what: str, counts: _Walk) -> Iterator[list[Any]]:
        """Every item of one listing, as lists of items not seen before (one list per page).

        Once a listing of this run has shown that the server ignores `offset`, later listings start
        with _whole_list (one call for most of them); otherwise _paged."""
        seen: set[str] = set()
        if self._offset_ignored:
            yield from self._whole_list(path, params, what, counts, seen, self.page_size)
        else:
            yield from self._paged(path, params, what, counts, seen, 0, on_repeat="whole_list")

    def _fresh(self, page: list[Any], seen: set[str], counts: _Walk) -> list[Any]:
        fresh = []
        for item in page:
            key = self._key(item)
            if key not in seen:
                seen.add(key)
                fresh.append(item)
        counts.new += len(fresh)
        return fresh

    def _paged(self, path: str, params: dict[str, Any], what: str, counts: _Walk, seen: set[str], offset: int,
               on_repeat: Literal["whole_list", "end"]) -> Generator[list[Any], None, str]:
        """Pages from `offset` until an empty page (never stops at a short one: servers cap pages
        below what is asked). An empty page right after a full one (as long as asked, or as the
        longest page of the run: the server's cap, which we may not know yet) is asked once more
        before it is believed: a glitch there would otherwise end the listing silently. A page that
        brings no new id means the server ignores `offset`: _whole_list takes over (or, when this
        walk checks a whole list, the list is complete). Every call brings a new id or ends the walk."""
        size = self.page_size
        prev_len, rechecked = 0, False
        while True:
            page = self._page(path, {**params, "number_of_results": size, "offset": offset}, f"{what} at offset {offset}")
            counts.pages += 1
            counts.rows += len(page)
            if not page:
                if prev_len and prev_len >= min(size, self._largest_page) and not rechecked:
                    rechecked = True
                    counts.empty_rechecked += 1
                    continue
                return "empty"
            if rechecked:
                counts.empty_not_end += 1
                log.warning("source '%s': %s: an empty page at offset %d was not the end (asked again: %d items)",
                            self.name, what, offset, len(page))
            fresh = self._fresh(page, seen, counts)
            if not fresh:  # the same items again: the server ignores offset (CRM.COM before R13)
                if on_repeat == "end":
                    return "repeat"
                counts.offset_ignored += 1
                if not self._offset_ignored:
                    self._offset_ignored = True
                    log.warning("source '%s': %s: the page at offset %d repeats ids already read: the server "
                                "ignores offset (CRM.COM before R13); reading whole lists instead", self.name, what, offset)
                yield from self._whole_list(path, params, what, counts, seen, size, page)
                return "repeat"
            if prev_len and prev_len < size and (self._server_cap or 0) < prev_len:
                self._server_cap = prev_len  # a short page that was not the last: the server's cap
            if len(page) > self._largest_page:
                self._largest_page = len(page)
            yield fresh
            offset += len(page)
            prev_len, rechecked = len(page), False

    def _whole_list(self, path: str, params: dict[str, Any], what: str, counts: _Walk, seen: set[str],
                    size: int, repeated: list[Any] | None = None) -> Iterator[list[Any]]:
        """A listing from a server that ignores `offset` (a pre-R13 server returns every item,
        whatever is asked): ask from offset 0 for ever more (x4 each time, bounded) until an answer
        is shorter than asked, or longer (number_of_results ignored too). When that answer is at
        least a page long, the next offset is asked once: a server that honours offset after all
        (a misjudged repeat) then goes on being paged, so a cap is never taken for the end. An
        answer exactly as long as the page cap this run has seen fails the run (cut by that cap)."""
        asked, answer = size, repeated
        while answer is None or len(answer) == size:
            if answer is not None:
                if size >= MAX_WHOLE_LIST:
                    raise self.http.error(f"{what}: the server ignores offset and still returns {len(answer)} items "
                                          f"when asked for {size}: the list cannot be read to its end",
                                          endpoint=f"GET {path}")
                size = min(size * 4, MAX_WHOLE_LIST)
            answer = self._page(path, {**params, "number_of_results": size, "offset": 0}, f"{what} (whole list)")
            counts.pages += 1
            counts.rows += len(answer)
            fresh = self._fresh(answer, seen, counts)
            if fresh:
                yield fresh
        if len(answer) > size:
            return  # more than asked: the server ignores number_of_results as well, this is everything
        at_cap = bool(self._server_cap) and len(answer) == self._server_cap
        if not at_cap and not (len(answer) >= asked and size > asked):
            return  # shorter than the first page asked: nothing suggests a cut
        ended = yield from self._paged(path, params, what, counts, seen, len(answer), on_repeat="end")
        if at_cap and ended == "repeat":
            raise self.http.error(f"{what}: the server ignores offset and its answer holds exactly {len(answer)} items, "
                                  "the page cap it showed in this run: the rest of the list cannot be read",
                                  endpoint=f"GET {path}")

    def _add_walk(self, counts: _Walk) -> None:
        with self._walk_lock:
            for name in counts.__dataclass_fields__:
                setattr(self.walks, name, getattr(self.walks, name) + getattr(counts, name))

    def _accounts(self) -> Iterator[str]:
        """Every AR id. The unfiltered list may be refused (each filter of the method is semi-optional,
        one required): then one listing per documented life_cycle_state."""
        counts = _Walk()
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
            self._add_walk(counts)

    def _ar_ids(self, page: list[Any]) -> Iterator[str]:
        for ar in page:
            ar_id = to_text(ar.get("id")) if isinstance(ar, dict) else None
            if not ar_id:
                raise self.http.error(f"an accounts receivable has no id: {ar!r}"[:300], endpoint=f"GET {AR_PATH}")
            yield ar_id

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
                        continue
                    result.records.append(record)
        finally:
            walk.close()
            result.pages = result.walk.pages
            self._add_walk(result.walk)
        return result

    def _merge(self, result: _AccountResult, seen: set[str]) -> list[SourceRecord]:
        extra = self.stats.extra
        self.stats.pages += result.pages
        self.stats.scanned += result.scanned
        extra["accounts_receivable"] = extra.get("accounts_receivable", 0) + 1
        extra["invoice_pages"] = extra.get("invoice_pages", 0) + result.pages
        extra["invoices_scanned"] = extra.get("invoices_scanned", 0) + result.scanned
        extra["invoices_outside_window"] = extra.get("invoices_outside_window", 0) + result.outside
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
            yield from batched(self._window_records(window), self.config.batch_size)
            self.stats.progress(self.name, force=True)
        finally:
            self._log_walks()
            # Release the token even when the run fails (close() would too; releasing twice is a no-op).
            self.auth.close()

    def _log_walks(self) -> None:
        """One line with what every listing did: pages, ids seen, ids new, and each oddity met."""
        w, extra = self.walks, self.stats.extra
        extra.update(list_pages=w.pages, list_rows=w.rows, list_ids_new=w.new, empty_pages_rechecked=w.empty_rechecked,
                     empty_pages_not_end=w.empty_not_end, listings_offset_ignored=w.offset_ignored,
                     server_page_cap=self._server_cap)
        log.info(
            "source '%s': listings: %d pages, %d rows read, %d distinct ids new to their listing, %d kept in the "
            "window; accounts listed %s; %d empty pages asked again (%d were not the end); %d listings where the "
            "server ignored offset; page cap seen: %s",
            self.name, w.pages, w.rows, w.new, self.stats.kept, extra.get("account_listing", "-"), w.empty_rechecked,
            w.empty_not_end, w.offset_ignored, self._server_cap or "none",
        )

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        workers = self.config.concurrency
        stop = threading.Event()
        seen: set[str] = set()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-ar") as pool:
            inflight: deque[Future[_AccountResult]] = deque()
            try:
                for ar_id in self._accounts():
                    inflight.append(pool.submit(self._account_invoices, ar_id, window, stop))
                    while len(inflight) >= workers * 2:  # bounded queue, results in AR order
                        yield from self._merge(inflight.popleft().result(), seen)
                    self.stats.progress(self.name)
                while inflight:
                    yield from self._merge(inflight.popleft().result(), seen)
                    self.stats.progress(self.name)
            except BaseException:  # also GeneratorExit: the consumer stopped early
                stop.set()
                for future in inflight:
                    future.cancel()
                raise

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
    def _account_or_none(self, ar_id: str, window: Window, stop: threading.Event) -> _AccountResult | None:
        """One AR's invoices; None when the AR itself is gone (INVALID_PARAMETER), not a failure."""
        try:
            return self._account_invoices(ar_id, window, stop)
        except SourceError as exc:
            if "INVALID_PARAMETER" not in str(exc):
                raise
            log.warning("source '%s': accounts receivable %s no longer exists; skipped", self.name, ar_id)
            return None

    def fetch_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        """Current version of these invoices: the API lists invoices only per AR, so read the ARs
        that hold them (customer_ids = accounts_receivable.id as stored) or, without them, every AR."""
        yield from batched(self._records_by_ids(ids, customer_ids), self.config.batch_size)

    def _records_by_ids(self, ids: Collection[str], customer_ids: Collection[str]) -> Iterator[SourceRecord]:
        wanted = set(ids)
        everything = Window(datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
        stop = threading.Event()
        accounts = sorted(set(customer_ids)) if customer_ids else list(self._accounts())
        workers = self.config.concurrency
        try:
            results = ordered_map(lambda ar: self._account_or_none(ar, everything, stop), accounts, workers,
                                  workers * 2, f"{self.name}-byid")
            for result in results:
                if result is None:
                    continue
                self.stats.pages += result.pages
                self.stats.scanned += result.scanned
                fresh: list[SourceRecord] = []
                for record in result.records:
                    if record.invoice_id in wanted:
                        wanted.discard(record.invoice_id)
                        fresh.append(record)
                        self.stats.kept += 1
                yield from fresh
        finally:
            stop.set()

    def _account_ids(self, ar_id: str) -> tuple[list[str], int]:
        """Ids of one AR's invoices (fields_set=id keeps the pages small); also the page count."""
        ids: list[str] = []
        counts = _Walk()
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
            self._add_walk(counts)
        return ids, counts.pages

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id of every AR. `since` is ignored: the API has no date filter."""
        workers = self.config.concurrency
        found: set[str] = set()
        try:
            for ids, pages in ordered_map(self._account_ids, self._accounts(), workers, workers * 2, f"{self.name}-ids"):
                self.stats.pages += pages
                self.stats.scanned += len(ids)
                found.update(ids)
        finally:
            self._log_walks()
        return found

