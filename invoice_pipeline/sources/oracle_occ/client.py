"""Oracle Commerce Cloud self-service invoices: bearer login, list paging, parallel detail calls."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import SecretStr

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import Auth, HttpClient
from invoice_pipeline.money import MappingError, to_timestamp
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window, batched, ordered_map
from invoice_pipeline.sources.oracle_occ.mapping import map_invoice
from invoice_pipeline.timeutil import iso_utc
from invoice_pipeline.logfold import fold_repeats

log = logging.getLogger("invoice_pipeline.oracle_occ")

LIST_PATH = "/ccstore/v1/selfservice/invoices"


class OracleOccConfig(SourceConfig):
    type: Literal["oracle_occ"]
    username: str
    password: SecretStr


class OracleTokenAuth(Auth):
    """Password-grant bearer token, refreshed before it expires and re-obtained on a 401."""

    REFRESH_AT = 0.8  # share of the token's life after which it is refreshed

    def __init__(self, http: HttpClient, username: str, password: str):
        self._http = http
        self._form = {"grant_type": "password", "username": username, "password": password}
        self._token: str | None = None
        self._refresh_after = 0.0
        self._lock = threading.Lock()
        self._used = threading.local()  # the token this thread last sent

    def _store(self, body: Any, endpoint: str) -> None:
        if not isinstance(body, dict) or not body.get("access_token"):
            raise self._http.error("login answered without an access_token", endpoint=endpoint)
        self._token = body["access_token"]
        lifetime = float(body.get("expires_in") or 300)
        self._refresh_after = time.monotonic() + lifetime * self.REFRESH_AT

    def _login(self) -> None:
        resp = self._http.request("POST", "/ccstore/v1/login", data=self._form, use_auth=False)
        self._store(resp.body, "POST /ccstore/v1/login")

    def _refresh(self) -> None:
        try:
            resp = self._http.request(
                "POST", "/ccstore/v1/refresh", headers={"Authorization": f"Bearer {self._token}"}, use_auth=False
            )
            self._store(resp.body, "POST /ccstore/v1/refresh")
        except SourceError as exc:
            log.info("source '%s': token refresh failed (%s); logging in again", self._http.source, exc.status)
            self._login()

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        with self._lock:
            if self._token is None:
                self._login()
            elif time.monotonic() >= self._refresh_after:
                self._refresh()
            self._used.token = self._token
            headers["Authorization"] = f"Bearer {self._token}"

    def renew(self) -> None:
        with self._lock:
            # Several workers see the same expired token: only the first logs in again.
            if self._token is None or getattr(self._used, "token", None) == self._token:
                self._login()

    def secrets(self) -> list[str]:
        return [self._token] if self._token else []


class OracleOccSource(Source):
    type_name = "oracle_occ"
    config_model = OracleOccConfig
    default_page_size = 25  # the API caps limit at 25 anyway
    has_installments = True
    key_field = "CustomerTransactionId"

    def __init__(self, name: str, config: OracleOccConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.http.auth = OracleTokenAuth(self.http, config.username, config.password.get_secret_value())

    # -- extraction --------------------------------------------------------------------------
    def _list_ids(self, window: Window) -> Iterator[str]:
        """Ids of invoices updated since window.start, oldest id first.

        The list filter has no upper bound on purpose: offset paging over a result set that
        shrinks while we page (an invoice updated mid-run leaving `<= end`) would skip records;
        with only a lower bound the set can only grow, which at worst repeats an id. Invoices
        newer than the frozen bound are simply loaded early. The order key is immutable.
        """
        offset = 0
        seen: set[str] = set()
        while True:
            params = {
                "q": f"LastUpdateDate>='{iso_utc(window.start)}'",
                "orderBy": "CustomerTransactionId:asc",
                "limit": self.page_size,
                "offset": offset,
            }
            body = self.http.request("GET", LIST_PATH, params=params).body
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise self.http.error("list response has no 'items' array", endpoint=f"GET {LIST_PATH}")
            items = body["items"]
            self.stats.pages += 1
            for item in items:
                invoice_id = item.get("CustomerTransactionId") if isinstance(item, dict) else None
                if invoice_id is None:
                    raise self.http.error(f"list item without CustomerTransactionId at offset {offset}")
                invoice_id = str(invoice_id)
                self.stats.scanned += 1
                if invoice_id not in seen:
                    seen.add(invoice_id)
                    yield invoice_id
            if not body.get("hasMore") or not items:
                return
            offset += len(items)

    def _detail(self, invoice_id: str) -> dict[str, Any] | None:
        path = f"{LIST_PATH}/{invoice_id}"
        try:
            body = self.http.request("GET", path).body
        except SourceError as exc:
            if exc.status == 404:  # deleted between the list call and this one
                log.warning("source '%s': invoice %s vanished before its detail call", self.name, invoice_id)
                self.stats.extra["vanished"] = self.stats.extra.get("vanished", 0) + 1
                return None
            raise
        if not isinstance(body, dict):
            raise self.http.error(f"invoice {invoice_id}: detail response is not a JSON object", endpoint=f"GET {path}")
        return body

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        with fold_repeats(log, "source '%s': invoice %s vanished before its detail call",  # one line, not thousands
                          f"source '{self.name}': {{count}} invoices vanished before their detail call in all "
                          "({folded} more than logged above), e.g. {examples}",
                          example=lambda r: str(r.args[1]), when=lambda r: r.args[0] == self.name):
            yield from batched(self._window_records(window), self.config.batch_size)
            self.stats.progress(self.name, force=True)

    def _window_records(self, window: Window) -> Iterator[SourceRecord]:
        workers = self.config.concurrency
        # A few rounds queued so list paging never starves the detail workers.
        details = ordered_map(self._detail, self._list_ids(window), workers, workers * 4, f"{self.name}-detail")
        for payload in details:
            if payload is not None:
                record = self.record_or_raw(payload)
                self.stats.kept += 1
                yield record
            self.stats.progress(self.name)

    # -- per-record ------------------------------------------------------------------------
    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        invoice_id = payload.get("CustomerTransactionId")
        if invoice_id in (None, ""):
            raise MappingError("CustomerTransactionId: missing")
        return SourceRecord(str(invoice_id), to_timestamp(payload.get("LastUpdateDate"), "LastUpdateDate"), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name)

    # -- lifecycle: specific invoices, the full id list -------------------------------------
    def fetch_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        """Current version of these invoices, one detail call each (parallel); an unknown id (404) is skipped.

        Re-polls open invoices: Oracle applies receipts without moving LastUpdateDate, so a
        modification window never sees them. customer_ids is not needed here.
        """
        yield from batched(self._records_by_ids(ids), self.config.batch_size)

    def _records_by_ids(self, ids: Collection[str]) -> Iterator[SourceRecord]:
        workers = self.config.concurrency
        for payload in ordered_map(self._detail, sorted(set(ids)), workers, workers * 4, f"{self.name}-byid"):
            self.stats.scanned += 1
            if payload is None:
                continue
            record = self.record_or_raw(payload)
            self.stats.kept += 1
            yield record

    def list_ids(self, since: datetime | None = None) -> set[str]:
        """Every invoice id last updated at or after `since` (default start_date): list pages only,
        no detail calls. Deletion reconciliation compares it with the warehouse."""
        start = since or self.config.start_date
        return set(self._list_ids(Window(start, start)))
