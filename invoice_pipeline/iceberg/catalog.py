"""The pyiceberg SQL catalog of a config, and the tables the backend writes (schemas, partitioning).

Layout mirrors the DuckDB warehouse: namespace `main` holds the conformed tables and the run tables,
one namespace per source holds its raw payloads and quarantine (`<source>._raw_invoices`).
"""

from __future__ import annotations

import logging
import os

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform, MonthTransform
from pyiceberg.types import (BooleanType, DateType, DecimalType, IntegerType, LongType, NestedField, StringType,
                             TimestamptzType)

from invoice_pipeline.model import QUARANTINE_SCHEMA, RAW_SCHEMA
from invoice_pipeline.config import IcebergConfig
from invoice_pipeline.conformed import ARROW_SCHEMAS
from invoice_pipeline.errors import ConfigError
from invoice_pipeline.lifecycle_tables import HISTORY_COLUMNS

log = logging.getLogger("invoice_pipeline.iceberg")

MAIN = "main"
INGEST = "ingest"  # the branch writers commit to; `main` is what publish.py fast-forwards after the audit
VERSION = "_last_modified_at"  # per-row version column of the conformed child tables (see merge.py)
CHILD_TABLES = ("invoice_lines", "invoice_tax_lines", "invoice_installments")
CONFORMED = ("invoices", *CHILD_TABLES)
TS = pa.timestamp("us", tz="UTC")
CURSORS_SCHEMA = pa.schema([("source_name", pa.string()), ("cursor_at", TS), ("run_id", pa.string()),
                            ("updated_at", TS)])
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("source_name", pa.string()), ("mode", pa.string()), ("window_start", TS),
    ("window_end", TS), ("started_at", TS), ("finished_at", TS), ("status", pa.string()),
    ("invoices_extracted", pa.int64()), ("invoices_loaded", pa.int64()), ("invoices_stale", pa.int64()),
    ("quarantined", pa.int64()), ("pages", pa.int64()), ("api_calls", pa.int64()), ("error", pa.string())])
# main.invoice_history (history.py): the DuckDB history's columns, types as in main.invoices.
HISTORY = "invoice_history"
_HISTORY_EXTRA = {"valid_from": TS, "valid_to": TS, "observed_at": TS, "run_id": pa.string(), "version_hash": pa.string()}
HISTORY_SCHEMA = pa.schema([(c, _HISTORY_EXTRA[c] if c in _HISTORY_EXTRA else ARROW_SCHEMAS["invoices"].field(c).type)
                            for c in HISTORY_COLUMNS])
# Per-source tables: rows are only ever added (a payload version once, a quarantined record per run).
SOURCE_TABLES = {"_raw_invoices": RAW_SCHEMA, "_quarantine": QUARANTINE_SCHEMA}


def conformed_schema(table: str) -> pa.Schema:
    """The Arrow schema of a conformed Iceberg table: the DuckDB one, children with their invoice's version."""
    schema = ARROW_SCHEMAS[table]
    return schema if table == "invoices" else schema.append(pa.field(VERSION, TS))


def main_tables() -> dict[str, pa.Schema]:
    return {**{t: conformed_schema(t) for t in CONFORMED}, HISTORY: HISTORY_SCHEMA, "_pipeline_cursors": CURSORS_SCHEMA,
            "_pipeline_runs": RUNS_SCHEMA}


def open_catalog(config: IcebergConfig) -> SqlCatalog:
    """The SQL catalog (SQLite or PostgreSQL); S3 credentials come from the AWS_* environment."""
    props = {"uri": config.catalog_uri.get_secret_value(), "warehouse": config.warehouse}
    if config.s3_endpoint:
        props["s3.endpoint"] = config.s3_endpoint
    if config.s3_region or os.environ.get("AWS_DEFAULT_REGION"):
        props["s3.region"] = config.s3_region or os.environ["AWS_DEFAULT_REGION"]
    for env, prop in (("AWS_ACCESS_KEY_ID", "s3.access-key-id"), ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
                      ("AWS_SESSION_TOKEN", "s3.session-token")):
        if os.environ.get(env):
            props[prop] = os.environ[env]
    try:
        return SqlCatalog(config.catalog_name, **props)
    except Exception as exc:  # a bad URL or an unreachable database: say which catalog, never the password
        raise ConfigError(f"config key 'warehouse.iceberg.catalog_uri': cannot open the Iceberg catalog "
                          f"({type(exc).__name__}: {_scrub(str(exc), config)})") from None


def _scrub(text: str, config: IcebergConfig) -> str:
    secret = config.catalog_uri.get_secret_value()
    return text.replace(secret, "<catalog_uri>") if secret else text


def iceberg_schema(schema: pa.Schema) -> Schema:
    """Arrow -> Iceberg schema with field ids 1..n, all optional (partition specs refer to the ids)."""
    fields = []
    for i, f in enumerate(schema, start=1):
        t = f.type
        if pa.types.is_string(t):
            it = StringType()
        elif pa.types.is_boolean(t):
            it = BooleanType()
        elif pa.types.is_int32(t):
            it = IntegerType()
        elif pa.types.is_int64(t):
            it = LongType()
        elif pa.types.is_date32(t):
            it = DateType()
        elif pa.types.is_timestamp(t):
            it = TimestamptzType()
        elif pa.types.is_decimal(t):
            it = DecimalType(t.precision, t.scale)
        else:  # pragma: no cover - every column type the pipeline writes is above
            raise TypeError(f"column {f.name}: no Iceberg type for Arrow {t}")
        fields.append(NestedField(i, f.name, it, required=False))
    return Schema(*fields)


def partition_spec(namespace: str, table: str, schema: Schema) -> PartitionSpec:
    """Conformed tables by source (and invoices by month of invoice_date): a source's merge rewrites
    only its own files, and readers prune by source and month."""
    if namespace != MAIN or table not in (*CONFORMED, HISTORY):
        return PartitionSpec()
    fields = [PartitionField(schema.find_field("source_name").field_id, 1000, IdentityTransform(), "source_name")]
    if table == "invoices":
        fields.append(PartitionField(schema.find_field("invoice_date").field_id, 1001, MonthTransform(), "invoice_month"))
    return PartitionSpec(*fields)


def ensure_table(catalog: Catalog, namespace: str, name: str, schema: pa.Schema) -> Table:
    """Create the table if missing (another process may create it at the same moment: both end up
    with the one table); a column added in a later release is added by schema evolution."""
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    ident = (namespace, name)
    try:
        table = catalog.load_table(ident)
    except Exception:  # NoSuchTableError
        ice = iceberg_schema(schema)
        try:
            table = catalog.create_table(ident, ice, partition_spec=partition_spec(namespace, name, ice))
        except TableAlreadyExistsError:
            table = catalog.load_table(ident)
    _ensure_ingest_branch(table, schema)
    missing = [f for f in schema if f.name not in table.schema().column_names]
    if missing:
        try:
            with table.update_schema() as update:
                update.union_by_name(pa.schema(missing))
        except CommitFailedException:  # someone else evolved it first
            table = catalog.load_table(ident)
    return table


def ensure_main(catalog: Catalog) -> dict[str, Table]:
    return {name: ensure_table(catalog, MAIN, name, schema) for name, schema in main_tables().items()}


def ensure_source(catalog: Catalog, source: str) -> dict[str, Table]:
    return {name: ensure_table(catalog, source, name, schema) for name, schema in SOURCE_TABLES.items()}


def _ensure_ingest_branch(table: Table, schema: pa.Schema) -> None:
    """The INGEST branch writers commit to. pyiceberg writes to a branch only once the table has a
    snapshot: a new table gets an empty one on main first (both then point at it)."""
    for _ in range(20):
        table.refresh()
        if INGEST in table.metadata.refs:
            return
        try:
            if table.current_snapshot() is None:
                table.append(schema.empty_table())
                continue
            table.manage_snapshots().create_branch(table.current_snapshot().snapshot_id, INGEST).commit()
        except CommitFailedException:  # another process did the same at the same moment
            continue
    raise RuntimeError(f"could not create branch {INGEST!r} of table {'.'.join(table.name())}")
