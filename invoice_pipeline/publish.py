"""Publishing what readers see: the conformed tables' upkeep, the read-only snapshot, the Parquet lake.

Readers never open the working database (DuckDB's lock would block the pipeline: docs/DESIGN.md,
"Stack facts the code relies on").
They get a snapshot file, written under a temporary name in a storage version DuckDB 1.4+ opens,
made read-only and swapped in with one `os.replace`: a reader that opens `published_path` gets
the old or the new file, never a mix, and a reader holding the old one open keeps reading it
(its inode lives until it disconnects) without blocking the next publish. The Parquet lake's
conformed tables are exported from that same snapshot file, so lake and snapshot are one version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from filelock import FileLock

from invoice_pipeline import __version__
from invoice_pipeline.config import AppConfig
from invoice_pipeline.testpoints import pause_point
from invoice_pipeline.conformed import CONFORMED_KEYS, CONFORMED_TABLES
from invoice_pipeline.lake import Lake, fsync_dir, new_version
from invoice_pipeline.audit import create_exceptions_view
from invoice_pipeline.sql import quote, sql_literal
from invoice_pipeline.views import create_analyst_views
from invoice_pipeline.warehouse import Warehouse, apply_comments

log = logging.getLogger("invoice_pipeline.publish")

PUBLISHED_STORAGE_VERSION = "v1.4.0"
PUBLISHES = "_pipeline_publishes"  # in the working database: what each snapshot held (its fingerprint)
LOAD_BOOKKEEPING = {"_loaded_at", "_run_id"}  # when and by which run a row was (re)written
SNAPSHOT_INFO = "_snapshot"  # one row: which version a reader is looking at, and when it was published
# Conformed tables in the lake: hive folders source_name=<source>/invoice_month=YYYY-MM (the parent
# invoice's month for child rows), so engines prune by source and period.
LAKE_PARTITIONS = ["source_name", "invoice_month"]
ARROW_BATCH = 64 * 1024


def refresh_conformed(wh: Warehouse, configured_sources: list[str]) -> dict[str, dict[str, int]]:
    """Row counts per conformed table and source.

    Rows of a source missing from this run's config are kept: one config file per source (or per
    schedule) is normal, and a source left out of one run keeps its cursor, so deleting its rows
    would lose them for good. Only `invoice-pipeline drop-source` removes a source (dropping.py).
    """
    counts: dict[str, dict[str, int]] = {}
    with wh.writer() as con:
        wh.ensure_main(con)
        for table in CONFORMED_TABLES:
            counts[table] = dict(
                con.execute(f"SELECT source_name, count(*) FROM main.{table} GROUP BY 1 ORDER BY 1").fetchall()
            )
    others = sorted(set(counts["invoices"]) - set(configured_sources))
    if others:
        log.info("conformed rows of sources not in this config kept: %s (remove one with "
                 "'invoice-pipeline drop-source --source NAME')", ", ".join(others))
    return counts


def _safe_dirname(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:80]
    return cleaned if cleaned == name else f"{cleaned}_{uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:8]}"


Comment = tuple[str, str | None, str]  # table, column (None: the table itself), text


def _analyst_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every non-internal table of main: the conformed model first, then e.g. lifecycle history and aging."""
    names = [t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND NOT starts_with(table_name, '_') ORDER BY 1").fetchall()]
    return [*CONFORMED_TABLES, *(t for t in names if t not in CONFORMED_TABLES)]


def _comments(con: duckdb.DuckDBPyConnection, tables: list[str]) -> list[Comment]:
    """The working database's own COMMENTs on the tables being published (CREATE TABLE AS drops them)."""
    where = "database_name = current_database() AND schema_name = 'main' AND list_contains(?, table_name) AND comment IS NOT NULL"
    return [
        *con.execute(f"SELECT table_name, NULL, comment FROM duckdb_tables() WHERE {where}", [tables]).fetchall(),
        *con.execute(f"SELECT table_name, column_name, comment FROM duckdb_columns() WHERE {where}", [tables]).fetchall(),
    ]


def _copy_into_snapshot(
    con: duckdb.DuckDBPyConnection, tmp: Path, snapshot_id: str, published_at: datetime
) -> tuple[dict[str, int], list[Comment]]:
    """Copy the analyst tables (and the cursors: how fresh each source is) into a new file, in one commit."""
    tables = _analyst_tables(con)
    comments = _comments(con, tables)
    counts: dict[str, int] = {}
    con.execute(f"ATTACH {sql_literal(str(tmp))} AS snapshot (STORAGE_VERSION '{PUBLISHED_STORAGE_VERSION}')")
    try:
        con.execute("BEGIN TRANSACTION")
        for table in tables:
            con.execute(_snapshot_table_sql(con, table))
        con.execute("CREATE TABLE snapshot.main._pipeline_cursors AS SELECT * FROM main._pipeline_cursors")
        con.execute(
            f"CREATE TABLE snapshot.main.{SNAPSHOT_INFO} AS SELECT ?::VARCHAR AS snapshot_id, ?::TIMESTAMPTZ AS published_at",
            [snapshot_id, published_at],
        )
        con.execute("COMMIT")
        for table in tables:
            counts[table] = con.execute(f"SELECT count(*) FROM snapshot.main.{quote(table)}").fetchone()[0]
    finally:
        con.execute("DETACH snapshot")
    return counts, comments


# Keys BI tools read from the snapshot (row identity, joins). Declared only where the blocking checks
# guarantee them before any publish: the conformed keys (unique_* checks; the mappings require the ids).
SNAPSHOT_KEYS: dict[str, tuple[str, ...]] = dict(CONFORMED_KEYS)


def _snapshot_table_sql(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """CREATE TABLE ... AS for a table without a declared key; with one, its columns as the working
    database has them plus the PRIMARY KEY, then the rows (same column order)."""
    key = SNAPSHOT_KEYS.get(table)
    if key is None:
        return f"CREATE TABLE snapshot.main.{quote(table)} AS SELECT * FROM main.{quote(table)}"
    columns = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ? ORDER BY column_index", [table]).fetchall()
    if not {c for c, _ in columns} >= set(key):
        return f"CREATE TABLE snapshot.main.{quote(table)} AS SELECT * FROM main.{quote(table)}"
    body = ", ".join(f"{quote(c)} {t}" for c, t in columns)
    return (f"CREATE TABLE snapshot.main.{quote(table)} ({body}, PRIMARY KEY ({', '.join(quote(k) for k in key)})); "
            f"INSERT INTO snapshot.main.{quote(table)} SELECT * FROM main.{quote(table)}")


def _finish_snapshot(snap: duckdb.DuckDBPyConnection, comments: list[Comment]) -> None:
    """Views and comments, created by a connection to the snapshot itself so they bind to its own tables."""
    apply_comments(snap)
    for table, column, text in comments:
        target = f"TABLE main.{quote(table)}" if column is None else f"COLUMN main.{quote(table)}.{quote(column)}"
        snap.execute(f"COMMENT ON {target} IS {sql_literal(text)}")
    create_analyst_views(snap)
    create_exceptions_view(snap)
    snap.execute(
        f"COMMENT ON TABLE main.{SNAPSHOT_INFO} IS 'The published version you are reading: snapshot_id (also the "
        "Parquet lake version) and when it was published.'"
    )
    snap.execute(
        "COMMENT ON TABLE main._pipeline_cursors IS 'Per source: the data is complete up to cursor_at (UTC), "
        "as of this snapshot.'"
    )
    snap.execute("CHECKPOINT")


def _conformed_lake_sql(table: str) -> str:
    keys = ", ".join(f"c.{k}" for k in CONFORMED_KEYS[table])
    month = "strftime(i.invoice_date, '%Y-%m') AS invoice_month"
    if table == "invoices":
        return f"SELECT c.*, {month.replace('i.', 'c.')} FROM main.invoices c ORDER BY c.source_name, invoice_month, {keys}"
    return (
        f"SELECT c.*, {month} FROM main.{table} c LEFT JOIN main.invoices i "
        f"ON i.source_name = c.source_name AND i.invoice_id = c.invoice_id ORDER BY c.source_name, invoice_month, {keys}"
    )


def _export_main_tables(snap: duckdb.DuckDBPyConnection, lake: Lake, tables: list[str], version: str) -> dict[str, int]:
    """Conformed tables by source and invoice month; other analyst tables by source where they have one."""
    written: dict[str, int] = {}
    for table in tables:
        if table in CONFORMED_TABLES:
            sql, partitions = _conformed_lake_sql(table), LAKE_PARTITIONS
        else:
            columns = {c for (c,) in snap.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ?", [table]).fetchall()}
            partitions = ["source_name"] if "source_name" in columns else []
            # sorted by its partition, so each source's rows go to one file (the lake writes what arrives in order)
            sql = f"SELECT * FROM main.{quote(table)}" + (" ORDER BY source_name" if partitions else "")
        written[table] = lake.write_table(_safe_dirname(table), snap.sql(sql).to_arrow_reader(ARROW_BATCH), partitions, version)
    return written


def _export_source_tables(con: duckdb.DuckDBPyConnection, wh: Warehouse, app: AppConfig, lake: Lake, version: str) -> dict[str, int]:
    """The flattened tables of each source in the warehouse, as sent (text): <source>/<table>/."""
    written: dict[str, int] = {}
    for source, name in _source_tables(con, wh, app):
        reader = con.sql(f"SELECT * FROM {quote(source)}.{quote(name)}").to_arrow_reader(ARROW_BATCH)
        written[f"{source}.{name}"] = lake.write_table(f"{source}/{_safe_dirname(name)}", reader, [], version)
    return written


def _source_tables(con: duckdb.DuckDBPyConnection, wh: Warehouse, app: AppConfig) -> list[tuple[str, str]]:
    """(schema, table) of every flattened table of every source in the warehouse, configured in this
    config or not: a source another config file loads (or one left out of this run) stays published."""
    schemas = [s for (s,) in con.execute(
        "SELECT DISTINCT schema_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name <> 'main' AND table_name = '_tables' ORDER BY 1").fetchall()]
    return [(source, name) for source in schemas for name in wh.source_tables(con, source).values()]


def _discard(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _clean_up(final: Path, lake: Lake) -> None:
    """What a killed publish left (its temporary snapshot file, lake versions never switched to, old
    versions): safe to remove, since the caller holds the publish lock."""
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        log.info("removing %s, left by an interrupted publish", leftover)
        try:
            os.chmod(leftover, stat.S_IRUSR | stat.S_IWUSR)
        except OSError:
            pass
        leftover.unlink(missing_ok=True)
    lake.clean_up()


def publish(app: AppConfig, wh: Warehouse) -> dict:
    """Write-audit-publish's last step: a new snapshot and lake version (call only after the blocking checks).

    Nothing is rewritten when the published content is unchanged since the last publish (an hourly
    run that found nothing new): readers keep the same version and the lake keeps its files. The
    snapshot's _pipeline_cursors then still show the cursors of that publish, a lower bound of
    how fresh the data is (docs/OPERATIONS.md).
    """
    final = Path(app.warehouse.published_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    lake = Lake(app.warehouse.parquet_dir)
    snapshot_id = new_version()
    published_at = datetime.now(UTC)
    tmp = final.with_name(f".{final.name}.tmp-{snapshot_id}")
    # One publish at a time, so a slower, older publish can never swap in after a newer one.
    with FileLock(str(final) + ".publish.lock"):
        _clean_up(final, lake)
        switched = False
        try:
            with wh.writer() as con:  # the working database is locked only while it is read
                wh.ensure_main(con)
                fingerprint, rows = content_fingerprint(con, wh, app)
                last = _last_publish(con)
                if last is not None and last[1] == fingerprint and final.exists() and lake.current() == last[0]:
                    log.info("published content unchanged since snapshot %s: nothing rewritten", last[0])
                    return {"published_path": str(final), "snapshot_id": last[0], "republished": False,
                            "snapshot_rows": rows, "parquet_dir": str(app.warehouse.parquet_dir), "parquet_rows": {}}
                counts, comments = _copy_into_snapshot(con, tmp, snapshot_id, published_at)
                pause_point("publish")  # tests kill a run here: a half-written snapshot beside the old one
                parquet = _export_source_tables(con, wh, app, lake, snapshot_id)
            snap = duckdb.connect(str(tmp), config={"memory_limit": app.warehouse.memory_limit})
            try:
                snap.execute("SET TimeZone = 'UTC'")
                _finish_snapshot(snap, comments)
                pause_point("lake")  # tests kill a run here: the source tables' new lake version written
                parquet = {**_export_main_tables(snap, lake, list(counts), snapshot_id), **parquet}
            finally:
                snap.close()
            # Read-only on disk: a BI tool that forgets read_only=true fails instead of taking DuckDB's
            # exclusive lock (which would lock every other reader out until the next publish).
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            final.with_name(final.name + ".wal").unlink(missing_ok=True)  # never replay a stale WAL onto it
            # The two switches, back to back: the lake's (every table at once), then the snapshot's.
            # A crash between them leaves the lake one version ahead until the next publish, which
            # republishes (this one is not recorded, and lake.current() differs from the last one).
            lake.switch(snapshot_id)
            switched = True
            os.replace(tmp, final)
        except BaseException:
            _discard(tmp)
            if not switched:
                lake.discard(snapshot_id)
            raise
        fsync_dir(final.parent)
        # Recorded after the swap: a crash in between costs one needless republish, never a skipped one.
        with wh.writer() as con:
            con.execute(f"INSERT INTO main.{PUBLISHES} VALUES (?, ?, ?)", [snapshot_id, fingerprint, published_at])
    log.info("published %s (snapshot %s) and %d Parquet tables under %s", final, snapshot_id, len(parquet), app.warehouse.parquet_dir)
    return {
        "published_path": str(final),
        "snapshot_id": snapshot_id,
        "republished": True,
        "snapshot_rows": counts,
        "parquet_dir": str(app.warehouse.parquet_dir),
        "parquet_rows": parquet,
    }


def content_fingerprint(con: duckdb.DuckDBPyConnection, wh: Warehouse, app: AppConfig) -> tuple[str, dict[str, int]]:
    """A hash of what a publish writes (every row of every published table, the code version) and
    the row counts of the analyst tables. One scan in DuckDB: far cheaper than a publish.

    The load bookkeeping columns are left out: a re-poll that re-reads identical invoices stamps
    them anew, and republishing identical data for that would make every hourly run a full publish.
    """
    digest = hashlib.sha256(f"{__version__}|{PUBLISHED_STORAGE_VERSION}".encode())
    rows: dict[str, int] = {}
    for schema, table in [("main", t) for t in _analyst_tables(con)] + _source_tables(con, wh, app):
        columns = [c for (c,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND schema_name = ? "
            "AND table_name = ? ORDER BY column_index", [schema, table]).fetchall() if c not in LOAD_BOOKKEEPING]
        row_hash = f"hash({', '.join(quote(c) for c in columns)})" if columns else "0"
        count, total = con.execute(
            f"SELECT count(*), sum({row_hash})::VARCHAR FROM {quote(schema)}.{quote(table)}").fetchone()
        digest.update(f"{schema}.{table}({','.join(columns)}):{count}:{total}\n".encode())
        if schema == "main":
            rows[table] = count
    return digest.hexdigest(), rows


def _last_publish(con: duckdb.DuckDBPyConnection) -> tuple[str, str] | None:
    con.execute(f"CREATE TABLE IF NOT EXISTS main.{PUBLISHES} (snapshot_id VARCHAR, fingerprint VARCHAR, published_at TIMESTAMPTZ)")
    row = con.execute(f"SELECT snapshot_id, fingerprint FROM main.{PUBLISHES} ORDER BY published_at DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else None
