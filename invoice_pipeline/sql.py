"""SQL text helpers: names and values from APIs are data, always quoted."""

from __future__ import annotations

import logging

import duckdb

log = logging.getLogger("invoice_pipeline.warehouse")


def quote(name: str) -> str:
    """A safe SQL identifier whatever characters the API put in a field name."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back after a failed statement or COMMIT. DuckDB may have aborted the transaction itself
    (a full disk, an I/O error): its "no transaction is active" must never replace the real cause,
    which the caller re-raises."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.debug("rollback after a failure: %s", exc)
