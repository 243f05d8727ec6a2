"""An in-memory source for testing the generic layers (flatten, merge, cursor) without HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from invoice_pipeline.http import HttpClient
from invoice_pipeline.money import MappingError, to_decimal, to_timestamp
from invoice_pipeline.sources.base import ConformedInvoice, Source, SourceRecord, Window
from invoice_pipeline.sources.oracle_occ.client import OracleOccConfig


class FakeSource(Source):
    """Payloads: {"id", "updated", "total", "lines": [{"id", "amount", "tax"}], ...anything}."""

    type_name = "fake"
    portable_mapping = False  # its constructor takes the payloads too
    config_model = OracleOccConfig

    def __init__(self, name: str, config: OracleOccConfig, payloads: list[dict[str, Any]], fail_after: int | None = None):
        super().__init__(name, config, HttpClient(name, config.base_url))
        self.payloads = payloads
        self.fail_after = fail_after

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        batch = []
        for n, p in enumerate(self.payloads):
            if self.fail_after is not None and n >= self.fail_after:
                raise RuntimeError("source died mid-run")
            batch.append(self.identify(p))
            if len(batch) == 2:
                yield batch
                batch = []
        if batch:
            yield batch

    def identify(self, payload: dict[str, Any]) -> SourceRecord:
        return SourceRecord(str(payload.get("id") or ""), to_timestamp(payload.get("updated"), "updated"), payload)

    def to_conformed(self, payload: dict[str, Any]) -> ConformedInvoice:
        if "total" not in payload:
            raise MappingError("total: missing")
        lines, taxes = [], []
        for ln in payload.get("lines", []):
            lines.append({"line_id": ln["id"], "line_amount": to_decimal(ln["amount"], "amount", required=True)})
            taxes.append({"tax_line_id": ln["id"], "line_id": ln["id"], "tax_amount": to_decimal(ln["tax"], "tax")})
        invoice = {
            "source_name": self.name, "source_type": "fake", "invoice_id": str(payload["id"]),
            "total_amount": to_decimal(payload["total"], "total", required=True),
            "balance_due": Decimal(0), "last_modified_at": to_timestamp(payload["updated"], "updated"),
        }
        return ConformedInvoice(invoice, lines, taxes)


def fake_config_block() -> dict[str, Any]:
    return {"type": "oracle_occ", "base_url": "http://127.0.0.1:9", "username": "u", "password": "p",
            "start_date": "2024-01-01T00:00:00Z"}


def invoice(n: int, updated: str = "2025-01-01T00:00:00Z", lines: int = 2, **extra: Any) -> dict[str, Any]:
    ls = [{"id": f"{n}-{i}", "amount": "10.10", "tax": "1.01"} for i in range(lines)]
    total = sum((Decimal("11.11") for _ in ls), Decimal(0))
    return {"id": str(n), "updated": updated, "total": str(total), "lines": ls, **extra}
