"""Fakebill client: an API key header, offset paging over a last-modified window."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import SecretStr

from invoice_pipeline.config import SourceConfig
from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError, to_timestamp
from invoice_pipeline.sources.auth import StaticTokenAuth
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window, batched
from invoice_pipeline_tests.fakebill.mapping import map_invoice


class FakebillConfig(SourceConfig):
    type: Literal["fakebill"]
    api_key: SecretStr


class FakebillSource(Source):
    type_name = "fakebill"
    config_model = FakebillConfig
    default_page_size = 50
    key_field = "id"

    @classmethod
    def describe_calls(cls, config: FakebillConfig, window: Window) -> str:
        page = config.page_size or cls.default_page_size
        return (f"pages of GET /v1/invoices?modified_from={window.start.isoformat()}"
                f"&modified_to={window.end.isoformat()}&limit={page}&offset=... with the X-Api-Key header")

    def __init__(self, name: str, config: FakebillConfig, http: HttpClient | None = None):
        super().__init__(name, config, http)
        self.http.auth = StaticTokenAuth("X-Api-Key", config.api_key)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        return self.http.request("GET", path, params=params).body

    def _pages(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            body = self._get("/v1/invoices", {**params, "offset": offset, "limit": self.page_size})
            self.stats.pages += 1
            items = body["items"]
            yield from items
            offset += len(items)
            if not items or offset >= body["total"]:
                return

    def _records(self, window: Window) -> Iterator[SourceRecord]:
        for payload in self._pages({"modified_from": window.start.isoformat(), "modified_to": window.end.isoformat()}):
            self.stats.scanned += 1
            self.stats.kept += 1
            yield self.record_or_raw(payload)
        self.stats.progress(self.name, force=True)

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        yield from batched(self._records(window), self.config.batch_size)

    def fetch_by_ids(self, ids: Collection[str], *, customer_ids: Collection[str] = ()) -> Iterator[list[SourceRecord]]:
        wanted = sorted(set(ids))
        records = (self.record_or_raw(p) for i in range(0, len(wanted), 50)
                   for p in self._pages({"ids": ",".join(wanted[i:i + 50])}))
        yield from batched(records, self.config.batch_size)

    def list_ids(self, since: datetime | None = None) -> set[str]:
        start = (since or self.config.start_date).isoformat()
        return {str(p["id"]) for p in self._pages({"modified_from": start})}

    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        if not payload.get("id"):
            raise MappingError("id: missing")
        return SourceRecord(str(payload["id"]), to_timestamp(payload.get("updated"), "updated"), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        return map_invoice(payload, self.name)
