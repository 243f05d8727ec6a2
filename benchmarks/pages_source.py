"""Oracle's mapping and identify(), fed from a file of detail pages instead of HTTP (benchmark 1).

A module of its own so the product's preparing process can rebuild the source from (name, config).
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from invoice_pipeline.sources.base import SourceRecord, Window, batched
from invoice_pipeline.sources.oracle_occ.client import OracleOccConfig, OracleOccSource


class PagesSource(OracleOccSource):
    def __init__(self, name: str, config: OracleOccConfig, pages: str = ""):
        super().__init__(name, config)
        self.pages = pages

    def extract(self, window: Window) -> Iterator[list[SourceRecord]]:
        return batched(self._records(), self.config.batch_size)

    def _records(self) -> Iterator[SourceRecord]:
        with open(self.pages, "rb") as f:
            for line in f:
                yield self.record_or_raw(orjson.loads(line))
