"""`invoice-pipeline dbt-sources`: a dbt `sources.yml` for the published snapshot, a starting point
for dbt models on top of the warehouse (docs/TOOLING.md, "dbt").

Read from the published snapshot itself (read-only, no lock), so the YAML lists exactly the tables,
views and columns analysts see, with the snapshot's COMMENTs as descriptions, and tests on the keys
of the conformed tables: `not_null` on every key column and `unique` on the key (a composite key as
one expression, so no dbt package is needed). The source's `database` is the alias under which
the dbt profile ATTACHes the snapshot read-only (dbt-duckdb's `attach:`), `published` by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import yaml

from invoice_pipeline.conformed import CONFORMED_KEYS
from invoice_pipeline.errors import PipelineError


def _relations(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str | None]]:
    """(name, comment) of every table and view of main that analysts read (no `_` internals)."""
    return con.execute(
        """SELECT table_name, comment FROM duckdb_tables() WHERE database_name = current_database()
             AND schema_name = 'main' AND NOT starts_with(table_name, '_')
           UNION ALL
           SELECT view_name, comment FROM duckdb_views() WHERE database_name = current_database()
             AND schema_name = 'main' AND NOT internal AND NOT starts_with(view_name, '_')
           ORDER BY 1""").fetchall()


def sources_document(snapshot: Path, name: str = "invoice_pipeline", database: str = "published") -> dict[str, Any]:
    """The sources.yml document of a published snapshot file."""
    if not snapshot.exists():
        raise PipelineError(f"dbt-sources: no published snapshot at {snapshot}: run `invoice-pipeline run` first "
                            "(its publish step writes it)")
    with duckdb.connect(str(snapshot), read_only=True) as con:
        tables = []
        for table, comment in _relations(con):
            keys = CONFORMED_KEYS.get(table, ())
            columns = []
            for column, type_, doc in con.execute(
                    "SELECT column_name, data_type, comment FROM duckdb_columns() WHERE database_name = current_database() "
                    "AND schema_name = 'main' AND table_name = ? ORDER BY column_index", [table]).fetchall():
                entry: dict[str, Any] = {"name": column, "data_type": type_.lower()}
                if doc:
                    entry["description"] = doc
                if column in keys:
                    entry["data_tests"] = ["not_null"] + (["unique"] if len(keys) == 1 else [])
                columns.append(entry)
            entry = {"name": table, **({"description": comment} if comment else {}), "columns": columns}
            if len(keys) > 1:  # unique on the whole key, as one expression
                entry["data_tests"] = [{"unique": {"column_name": " || '|' || ".join(
                    f"coalesce(cast({k} as varchar), '')" for k in keys)}}]
            tables.append(entry)
    return {"version": 2, "sources": [{
        "name": name, "database": database, "schema": "main",
        "description": f"The invoice pipeline's published snapshot ({snapshot.name}): read-only, replaced atomically "
                       "after each run whose blocking checks passed. Attach it read-only in the dbt profile "
                       f"under the alias '{database}'.",
        "tables": tables}]}


def write_sources(snapshot: Path, output: Path, name: str = "invoice_pipeline", database: str = "published") -> Path:
    document = sources_document(snapshot, name, database)
    output.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by `invoice-pipeline dbt-sources` from the published snapshot's tables, columns and comments.\n"
              "# Regenerate it after an upgrade of invoice-pipeline adds columns.\n")
    output.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))
    return output
