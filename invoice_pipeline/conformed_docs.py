"""The conformed tables' column comments: each column's description plus where every registered source
takes it from (the COLUMN_SOURCES its sources/<type>/mapping.py declares).

It sits above the source packages (it reads their mappings through the registry, source_types.py),
so the core model (model.py, conformed.py) never names a source. The warehouse applies these texts
as COMMENT ON COLUMN; docs/DATA_DICTIONARY.md is generated from those comments.
"""

from __future__ import annotations

import functools
import importlib
import logging

from invoice_pipeline.conformed import TABLE_COMMENTS, Provenance, documented_tables
from invoice_pipeline.source_types import known_types, mapping_module
from invoice_pipeline.sql import quote, sql_literal

log = logging.getLogger("invoice_pipeline.conformed")


def source_provenance(type_name: str) -> Provenance | None:
    """COLUMN_SOURCES of a source type's mapping module, or None when it declares none."""
    name = mapping_module(type_name)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the mapping exists but one of its own imports is missing: not ours to hide
        return None
    return getattr(module, "COLUMN_SOURCES", None)


def provenance() -> dict[str, Provenance]:
    """source type -> its COLUMN_SOURCES, for every registered (importable) source type."""
    out: dict[str, Provenance] = {}
    for type_name in known_types():
        declared = source_provenance(type_name)
        if declared is None:
            log.warning("source type '%s' declares no COLUMN_SOURCES in its mapping.py: the conformed columns' "
                        "comments do not say where it takes them from", type_name)
            continue
        out[type_name] = declared
    return out


@functools.cache
def conformed_columns() -> dict[str, dict[str, tuple[str, str]]]:
    """table -> column -> (DuckDB type, comment with per-source provenance): what the warehouse
    should create and comment (same shape as conformed.CONFORMED_TABLES, fuller comments).

    Raises ValueError naming the source and column when a source's declaration is incomplete.
    """
    return documented_tables(provenance())


def comment_statements(catalog: str = "") -> list[str]:
    """COMMENT ON TABLE/COLUMN statements for every conformed table and column (main schema of `catalog`)."""
    prefix = f"{quote(catalog)}.main." if catalog else "main."
    statements = []
    for table, columns in conformed_columns().items():
        statements.append(f"COMMENT ON TABLE {prefix}{table} IS {sql_literal(TABLE_COMMENTS[table])}")
        statements += [f"COMMENT ON COLUMN {prefix}{table}.{quote(c)} IS {sql_literal(doc)}"
                       for c, (_, doc) in columns.items()]
    return statements
