"""The published snapshot and the Parquet lake: contents, atomic replacement, write-audit-publish, S3."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from invoice_pipeline.config import AppConfig
from invoice_pipeline.conformed import CONFORMED_KEYS, CONFORMED_TABLES
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.publish import SNAPSHOT_INFO, publish
from invoice_pipeline.sources.base import Window
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.views import ANALYST_VIEWS
from invoice_pipeline.warehouse import Warehouse

from .conftest import make_app, write_app_config

Row = dict[str, Any]


# -- helpers shared with test_bi_clients and test_readers_concurrent ------------------------------
def rows_by_key(rows: list[Row], table: str) -> dict[tuple, Row]:
    """Rows keyed by the table's primary key, limited to the conformed columns (drops lake-only columns)."""
    columns = list(CONFORMED_TABLES[table])
    keyed = {tuple(r[k] for k in CONFORMED_KEYS[table]): {c: r[c] for c in columns} for r in rows}
    assert len(keyed) == len(rows), f"duplicate keys in {table}"
    return keyed


def fetch_rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[Row]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def warehouse_tables(wh: Warehouse) -> dict[str, dict[tuple, Row]]:
    """Every conformed table of the working database, keyed (the truth readers are compared with)."""
    with wh.writer() as con:
        return {t: rows_by_key(fetch_rows(con, f"SELECT * FROM main.{t}"), t) for t in CONFORMED_TABLES}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the snapshot -------------------------------------------------------------------------------
@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[tuple[AppConfig, Warehouse, Any]]:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=60) as sim:
        app = make_app(tmp_path, {"agv": sim.source_config()})
        wh = Warehouse(app.warehouse)
        run_source(app, "agv", warehouse=wh)
        yield app, wh, sim


def test_snapshot_is_a_read_only_copy_with_views_and_comments(loaded) -> None:
    app, wh, _ = loaded
    with wh.writer() as con:  # another analyst table of main (like the lifecycle's history) is published too
        con.execute("CREATE TABLE main.extra_facts AS SELECT source_name, invoice_id, total_amount FROM main.invoices")
        con.execute("COMMENT ON TABLE main.extra_facts IS 'extra table doc'")
        con.execute("COMMENT ON COLUMN main.extra_facts.total_amount IS 'extra column doc'")
    result = publish(app, wh)
    path = Path(app.warehouse.published_path)
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, "the snapshot must not be writable"
    # only the snapshot (and the publish lock) is left: no temporary file, no WAL
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".publish.lock"]
    truth = warehouse_tables(wh)
    con = duckdb.connect(str(path), read_only=True)
    try:
        for table in CONFORMED_TABLES:
            assert rows_by_key(fetch_rows(con, f"SELECT * FROM {table}"), table) == truth[table], table
            assert result["snapshot_rows"][table] == len(truth[table])
        assert con.execute(f"SELECT snapshot_id FROM {SNAPSHOT_INFO}").fetchone()[0] == result["snapshot_id"]
        assert con.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'extra_facts'").fetchone()[0] == "extra table doc"
        assert con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'extra_facts' "
                           "AND column_name = 'total_amount'").fetchone()[0] == "extra column doc"
        assert con.execute("SELECT sum(total_amount) FROM extra_facts").fetchone()[0] == sum(
            (i["total_amount"] for i in truth["invoices"].values()), Decimal(0))
        views = dict(con.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall())
        for name, (description, _) in ANALYST_VIEWS.items():
            assert views[name] == description
        assert views["reconciliation_exceptions"]
        undocumented = con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE table_name IN "
            f"({', '.join(repr(t) for t in CONFORMED_TABLES)}) AND comment IS NULL"
        ).fetchall()
        assert undocumented == []
        # the aging view agrees with the open installments computed here from the raw rows
        open_due = sum(
            (n["balance_due"] for n in truth["invoice_installments"].values()
             if n["balance_due"] != 0 and not truth["invoices"][(n["source_name"], n["invoice_id"])]["is_void"]
             and not truth["invoices"][(n["source_name"], n["invoice_id"])]["is_deleted"]),
            Decimal(0),
        )
        assert open_due != 0
        assert con.execute("SELECT sum(balance_due) FROM ar_aging").fetchone()[0] == open_due
        buckets = {b for (b,) in con.execute("SELECT DISTINCT aging_bucket FROM ar_aging").fetchall()}
        assert buckets <= {"current", "1-30", "31-60", "61-90", "90+", "no_due_date"}
        revenue = con.execute("SELECT sum(total_amount) FROM revenue_by_month").fetchone()[0]
        assert revenue == sum((i["total_amount"] for i in truth["invoices"].values()
                               if not i["is_void"] and not i["is_deleted"]), Decimal(0))
    finally:
        con.close()
    lake = Path(app.warehouse.parquet_dir) / "extra_facts"
    extra = ds.dataset(str(lake), format="parquet", partitioning="hive")
    assert extra.count_rows() == len(truth["invoices"]) and all("/source_name=agv/" in f for f in extra.files)


def test_failed_publish_leaves_the_last_good_snapshot_and_no_temporary_files(loaded, monkeypatch) -> None:
    app, wh, sim = loaded
    publish(app, wh)
    path = Path(app.warehouse.published_path)
    before = file_digest(path)
    sim.mutate(new=5, seed=3)
    run_source(app, "agv", warehouse=wh)

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError("disk full")

    monkeypatch.setattr("invoice_pipeline.lake.Lake.write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        publish(app, wh)
    assert file_digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".publish.lock"]


def test_failed_blocking_check_keeps_last_good_snapshot_and_lake(in_tmp: Path) -> None:
    from invoice_pipeline.defs import build_definitions
    from invoice_pipeline.defs.keys import ALL_ASSETS_JOB
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=40) as sim:
        app, config_path = write_app_config(in_tmp, {"agv": sim.source_config()})
        defs = build_definitions(app, str(config_path))
        run_source(app, "agv")  # a good run, published (the Dagster path of a good run: test_definitions)
        publish(app, Warehouse(app.warehouse))
        published = Path(app.warehouse.published_path)
        good_snapshot = file_digest(published)
        lake_invoices = Path(app.warehouse.parquet_dir) / "invoices"
        good_lake = lake_invoices.resolve()

        sim.knobs.inconsistent_rate = 1.0  # every new invoice's header total is off
        sim.mutate(new=3, seed=5)
        job = defs.resolve_job_def(ALL_ASSETS_JOB)
        result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success or not any(
            e.asset_key == dg.AssetKey(["published", "warehouse"]) for e in result.get_asset_materialization_events()
        )
        failed = [e.event_specific_data.check_name for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed]
        assert "lines_plus_tax_equal_total" in failed
        with Warehouse(app.warehouse).writer() as con:  # the bad rows did land in the working database
            assert con.execute("SELECT count(*) FROM main.invoices").fetchone()[0] == 43
        assert file_digest(published) == good_snapshot
        assert lake_invoices.resolve() == good_lake
        con = duckdb.connect(str(published), read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM invoices").fetchone()[0] == 40
        finally:
            con.close()


# -- the lake -------------------------------------------------------------------------------------
def test_lake_versions_switch_atomically_and_keep_one_previous(loaded) -> None:
    app, wh, sim = loaded
    root = Path(app.warehouse.parquet_dir)
    (root / "invoices").mkdir(parents=True)  # a plain folder left by an older release
    (root / "invoices" / "stale.parquet").write_bytes(b"not parquet")
    first = publish(app, wh)
    assert (root / "invoices").is_symlink() and not (root / "invoices" / "stale.parquet").exists()
    # A reader that pins the version it lists (the link's target, named by the snapshot id) ...
    pinned = (root / "invoices").resolve()
    assert pinned == (root / "_v" / first["snapshot_id"] / "invoices").resolve()
    listed = sorted(str(p) for p in pinned.rglob("*.parquet"))
    months = {p.parent.name for p in (root / "invoices").rglob("*.parquet")}
    assert len(months) > 1 and all(m.startswith("invoice_month=") for m in months)

    sim.mutate(new=4, updates=3, seed=2)
    run_source(app, "agv", warehouse=wh)
    second = publish(app, wh)
    # ... can still read every file it listed after the switch (the previous version is kept)
    assert ds.dataset(listed, format="parquet").count_rows() == first["snapshot_rows"]["invoices"]
    current = ds.dataset(str(root / "invoices"), format="parquet", partitioning="hive")
    assert current.count_rows() == second["snapshot_rows"]["invoices"] == first["snapshot_rows"]["invoices"] + 4
    assert os.readlink(root / "_current").endswith(second["snapshot_id"])

    sim.mutate(updates=2, seed=3)
    run_source(app, "agv", warehouse=wh)
    publish(app, wh)
    versions = sorted(p.name for p in (root / "_v").iterdir())
    assert len(versions) == 2 and versions[0] == second["snapshot_id"]  # older ones are pruned
    assert not any(Path(p).exists() for p in listed)
    assert not list(root.glob(".*.link-*"))


def test_unchanged_content_is_not_republished(loaded) -> None:
    app, wh, sim = loaded
    final = Path(app.warehouse.published_path)
    first = publish(app, wh)
    before = (final.stat().st_ino, file_digest(final), (Path(app.warehouse.parquet_dir) / "invoices").resolve())
    # A re-read of identical invoices (what every hourly re-poll does) stamps _loaded_at/_run_id anew ...
    reread = run_source(app, "agv", warehouse=wh, window=Window(app.sources["agv"].start_date, utc_now()))
    assert reread.invoices_loaded > 0
    second = publish(app, wh)
    # ... and publishes nothing new: same version, same file, same lake link.
    assert second["republished"] is False and second["snapshot_id"] == first["snapshot_id"]
    assert second["snapshot_rows"] == first["snapshot_rows"]
    assert (final.stat().st_ino, file_digest(final), (Path(app.warehouse.parquet_dir) / "invoices").resolve()) == before
    sim.mutate(updates=1, seed=4)  # one changed amount is enough
    run_source(app, "agv", warehouse=wh)
    third = publish(app, wh)
    assert third["republished"] is True and third["snapshot_id"] != first["snapshot_id"]
    final.unlink()  # a deleted snapshot file is published again even though nothing changed
    assert publish(app, wh)["republished"] is True and final.exists()


def test_empty_tables_are_folders_with_their_schema(tmp_path: Path) -> None:
    from .fake_source import fake_config_block

    app = make_app(tmp_path, {"a": fake_config_block()})
    wh = Warehouse(app.warehouse)
    result = publish(app, wh)
    assert result["parquet_rows"] == {t: 0 for t in CONFORMED_TABLES}
    dataset = ds.dataset(str(Path(app.warehouse.parquet_dir) / "invoices"), format="parquet", partitioning="hive")
    assert dataset.count_rows() == 0 and str(dataset.schema.field("total_amount").type) == "decimal128(18, 4)"
    con = duckdb.connect()
    try:
        glob = str(Path(app.warehouse.parquet_dir) / "invoice_lines" / "**" / "*.parquet")
        assert con.execute(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true)").fetchone()[0] == 0
    finally:
        con.close()


# -- the lake on an object store ------------------------------------------------------------------
@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3-compatible server on loopback, with the AWS_* variables a deployment would set."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        server.stop()


def test_lake_on_s3_compatible_object_store(tmp_path: Path, s3_endpoint: str) -> None:
    from .fake_source import FakeSource, fake_config_block, invoice

    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint, region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("lakebucket")
    app = make_app(tmp_path, {"a": fake_config_block()})
    app = app.model_copy(update={"warehouse": app.warehouse.model_copy(update={"parquet_dir": "s3://lakebucket/ar/lake"})})
    wh = Warehouse(app.warehouse)
    run_source(app, "a", warehouse=wh, source=FakeSource("a", app.sources["a"], [invoice(n) for n in range(6)]))
    with s3.open_output_stream("lakebucket/ar/lake/invoices/part-legacy-0.parquet") as out:  # an earlier release's layout
        out.write(b"old")
    first = publish(app, wh)
    assert s3.get_file_info("lakebucket/ar/lake/invoices").type == pafs.FileType.NotFound  # stale: removed
    changed = [invoice(n, updated="2025-02-01T00:00:00Z", lines=3) for n in range(2, 9)]
    run_source(app, "a", warehouse=wh, source=FakeSource("a", app.sources["a"], changed))
    with s3.open_output_stream("lakebucket/ar/lake/_v/29991231T000000000000Z-killed/invoices/x.parquet") as out:
        out.write(b"a publish killed before its switch")
    second = publish(app, wh)
    versions = sorted(i.base_name for i in s3.get_file_info(pafs.FileSelector("lakebucket/ar/lake/_v")))
    assert versions == [first["snapshot_id"], second["snapshot_id"]]  # the unfinished one is gone, previous kept
    assert second["snapshot_rows"]["invoices"] == 9 and first["snapshot_rows"]["invoices"] == 6

    truth = warehouse_tables(wh)
    # The fake source sends no invoice dates: every row is in invoice_month=__HIVE_DEFAULT_PARTITION__,
    # which pyarrow can only read with the partition schema given (as docs/QUERYING.md shows).
    hive = ds.partitioning(pa.schema([("source_name", pa.string()), ("invoice_month", pa.string())]), flavor="hive")
    # readers follow the manifest, written last: it names the current version's folder of each table
    with s3.open_input_stream("lakebucket/ar/lake/_current.json") as f:
        manifest = json.loads(f.read())
    assert manifest["version"] == second["snapshot_id"]
    assert manifest["tables"]["invoices"] == f"_v/{second['snapshot_id']}/invoices"
    for table in CONFORMED_TABLES:
        dataset = ds.dataset(f"lakebucket/ar/lake/{manifest['tables'][table]}", filesystem=s3, format="parquet",
                             partitioning=hive)
        assert dataset.files and all(f"part-{second['snapshot_id']}-" in f for f in dataset.files), "stale objects left"
        assert all("/source_name=a/invoice_month=" in f for f in dataset.files)
        assert rows_by_key(dataset.to_table().to_pylist(), table) == truth[table], table
    schema = ds.dataset(f"lakebucket/ar/lake/{manifest['tables']['invoices']}", filesystem=s3, partitioning=hive).schema
    assert str(schema.field("last_modified_at").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("total_amount").type) == "decimal128(18, 4)"
    raw = ds.dataset(f"lakebucket/ar/lake/{manifest['tables']['a/invoices']}", filesystem=s3, format="parquet")
    assert raw.count_rows() == 9
