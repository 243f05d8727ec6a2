"""CRM.COM Web API (SPEC 2.2): token login, every accounts receivable, client-side incremental filter.

The API has no date filter and lists invoices only per accounts receivable, so a run pages the
AR list, pages every AR's invoices (in parallel, bounded by `concurrency`) and keeps those whose
naive `log_information.updated_date`, read in the tenant's `timezone`, falls inside the window.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr, field_validator

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.errors import AuthExpired, SourceError
from invoice_pipeline.http import Auth, HttpClient, Validator
from invoice_pipeline.money import MappingError, to_text, to_timestamp
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window, batched, ordered_map
from invoice_pipeline.sources.crmcom.mapping import map_invoice

log = logging.getLogger("invoice_pipeline.crmcom")

AR_PATH = "/accounts_receivable/list"
INVOICES_PATH = "/invoices/list"
MAX_PAGE = 500  # the API caps number_of_results silently: asking more would look like a short (last) page


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
class _AccountResult:
    """What one worker found in one AR's invoices (merged into the stats by the calling thread)."""

    account_id: str
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

    def _accounts(self) -> Iterator[str]:
        """Every AR id. No total and no more-flag: a page shorter than asked is the last one."""
        offset, size, seen = 0, self.page_size, set()
        while True:
            page = self._page(AR_PATH, {"number_of_results": size, "offset": offset}, f"accounts receivable at offset {offset}")
            self.stats.pages += 1
            self.stats.extra["account_pages"] = self.stats.extra.get("account_pages", 0) + 1
            for pos, ar in enumerate(page):
                ar_id = to_text(ar.get("id")) if isinstance(ar, dict) else None
                if not ar_id:
                    raise self.http.error(f"accounts receivable at offset {offset + pos} has no id", endpoint=f"GET {AR_PATH}")
                if ar_id not in seen:  # offset paging over a growing list can repeat one
                    seen.add(ar_id)
                    yield ar_id
            if len(page) < size:
                return
            offset += len(page)

    def _account_invoices(self, ar_id: str, window: Window, stop: threading.Event) -> _AccountResult:
        """All invoices of one AR (one identifier per call, as the API requires), filtered to the window."""
        result = _AccountResult(ar_id)
        offset, size = 0, self.page_size
        while not stop.is_set():
            params = {"accounts_receivable_identifier": f"id={ar_id}", "number_of_results": size, "offset": offset}
            page = self._page(INVOICES_PATH, params, f"invoices of accounts receivable {ar_id} at offset {offset}")
            result.pages += 1
            for pos, payload in enumerate(page):
                if not isinstance(payload, dict):
                    raise self.http.error(
                        f"invoices of accounts receivable {ar_id}: item {offset + pos} is not an object",
                        endpoint=f"GET {INVOICES_PATH}",
                    )
                result.scanned += 1
                record = self.record_or_raw(payload)
                if record.last_modified_at is None:
                    result.undated += 1  # cannot be placed in time: pass it on (mapping decides)
                elif not window.start <= record.last_modified_at <= window.end:
                    result.outside += 1
                    continue
                result.records.append(record)
            if len(page) < size:  # short page = last; an exact multiple ends with an empty page
                break
            offset += len(page)
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
            # Release the token even when the run fails (close() would too; releasing twice is a no-op).
            self.auth.close()

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
        offset, size, pages = 0, self.page_size, 0
        while True:
            params = {"accounts_receivable_identifier": f"id={ar_id}", "number_of_results": size,
                      "offset": offset, "fields_set": "id"}
            page = self._page(INVOICES_PATH, params, f"invoice ids of accounts receivable {ar_id} at offset {offset}")
            pages += 1
            for pos, item in enumerate(page):
                invoice_id = to_text(item.get("id")) if isinstance(item, dict) else None
                if not invoice_id:
                    raise self.http.error(f"invoices of accounts receivable {ar_id}: item {offset + pos} has no id",
                                          endpoint=f"GET {INVOICES_PATH}")
                ids.append(invoice_id)
            if len(page) < size:
                return ids, pages
            offset += len(page)

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id of every AR. `since` is ignored: the API has no date filter."""
        workers = self.config.concurrency
        found: set[str] = set()
        for ids, pages in ordered_map(self._account_ids, self._accounts(), workers, workers * 2, f"{self.name}-ids"):
            self.stats.pages += pages
            self.stats.scanned += len(ids)
            found.update(ids)
        return found

