"""The DuckDB warehouse: `Warehouse` over three modules.

- connections.py: the file under a cross-process writer lock, writer turns, sessions;
- schema.py: main's tables, views and comments; each source's flattened tables, widened as new
  paths arrive, capped, with overflow; the name registry;
- merge.py: idempotent batch merges and the cursor that commits with a run's last batch.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from invoice_pipeline.model import LoadBatch
from invoice_pipeline.config import WarehouseConfig
from invoice_pipeline.sql import quote
from invoice_pipeline.warehouse import merge, schema
from invoice_pipeline.warehouse.connections import Connections, SessionTurns, WriterTurns
from invoice_pipeline.warehouse.merge import BatchResult
from invoice_pipeline.warehouse.schema import apply_comments

__all__ = ["BatchResult", "SessionTurns", "Warehouse", "WriterTurns", "apply_comments", "quote"]


class Warehouse(Connections):
    """Connections (writer(), reader(), turns(), session()) plus the schema and merge steps, with
    this process's cache of each source's name registry."""

    def __init__(self, config: WarehouseConfig):
        super().__init__(config)
        self._registries: dict[str, schema.Registry] = {}
        self.max_columns_per_table = schema.MAX_COLUMNS_PER_TABLE

    def ensure_main(self, con: duckdb.DuckDBPyConnection) -> None:
        schema.ensure_main(con)

    def ensure_source(self, con: duckdb.DuckDBPyConnection, source: str) -> None:
        schema.ensure_source(con, source)

    def source_tables(self, con: duckdb.DuckDBPyConnection, source: str) -> dict[str, str]:
        return schema.source_tables(con, source)

    def cursor(self, con: duckdb.DuckDBPyConnection, source: str) -> datetime | None:
        return merge.stored_cursor(con, source)

    def write_batch(self, con: duckdb.DuckDBPyConnection, batch: LoadBatch) -> BatchResult:
        return merge.write_batch(con, batch, self._registries, self.max_columns_per_table)
