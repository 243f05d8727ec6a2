"""Nothing lost between config files, nothing overwritten by a bad config: the real CLI in a subprocess.

- A source left out of one run's config (one config file per source is a normal way to split
  schedules) keeps its conformed rows, its place in the published snapshot and in the lake; only
  `invoice-pipeline drop-source --yes` removes a source, and a dropped source that returns is whole.
- Overlapping warehouse paths (published_path = duckdb_path, the lake inside a database's
  spill folder ...) are refused at start-up, naming the keys, before anything is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

from invoice_pipeline.config import parse_config
from invoice_pipeline.errors import ConfigError
from invoice_pipeline.lifecycle import build_aging_snapshot
from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS as AGVANCE
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS as SOFTWAREONE
from invoice_pipeline.warehouse import Warehouse

HIVE = ds.partitioning(pa.schema([("source_name", pa.string()), ("invoice_month", pa.string())]), flavor="hive")


def cli(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    environ["DAGSTER_HOME"] = str(tmp_path / "dagster_home")  # persistent across the runs of one test
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return output


def warehouse_block(tmp_path: Path) -> dict[str, str]:
    return {"duckdb_path": str(tmp_path / "data" / "warehouse.duckdb"),
            "published_path": str(tmp_path / "data" / "published" / "warehouse.duckdb"),
            "parquet_dir": str(tmp_path / "data" / "parquet")}


def write_config(tmp_path: Path, name: str, sources: dict[str, Any], **warehouse: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"warehouse": {**warehouse_block(tmp_path), **warehouse}, "sources": sources}))
    return path


def counts(db: Path, sql: str) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute(sql).fetchall())
    finally:
        con.close()


def invoices_by_source(db: Path) -> dict[str, int]:
    return counts(db, "SELECT source_name, count(*) FROM main.invoices GROUP BY 1")


def lake_by_source(tmp_path: Path) -> dict[str, int]:
    """Invoices per source in the lake, read the way docs/QUERYING.md shows (the stable table path)."""
    table = ds.dataset(str(tmp_path / "data" / "parquet" / "invoices"), format="parquet", partitioning=HIVE).to_table()
    return {r["source_name"]: r["source_name_count"]
            for r in table.group_by("source_name").aggregate([("source_name", "count")]).to_pylist()}


def test_a_source_left_out_of_a_run_keeps_its_data_and_only_drop_source_removes_it(tmp_path: Path) -> None:
    work = tmp_path / "data" / "warehouse.duckdb"
    published = tmp_path / "data" / "published" / "warehouse.duckdb"
    with AGVANCE(size=30) as agv_sim, SOFTWAREONE(size=20) as sw_sim:
        # one config file per source, one warehouse: a normal way to give each source its own schedule
        agv_cfg = write_config(tmp_path, "agv", {"agv": agv_sim.source_config()})
        sw_cfg = write_config(tmp_path, "sw", {"sw": sw_sim.source_config()})
        ok(cli(tmp_path, "run", "--config", str(agv_cfg)))
        ok(cli(tmp_path, "run", "--config", str(sw_cfg)))
        # the run of sw.yaml kept agv: in the working database, the snapshot and the lake (conformed and raw)
        assert invoices_by_source(work) == {"agv": 30, "sw": 20}
        assert invoices_by_source(published) == {"agv": 30, "sw": 20}
        assert lake_by_source(tmp_path) == {"agv": 30, "sw": 20}
        assert ds.dataset(str(tmp_path / "data" / "parquet" / "agv" / "invoices"), format="parquet").count_rows() == 30
        # ... and the next agv run (cursor kept, nothing new) still has all of them
        agv_sim.mutate(new=2, seed=7)
        ok(cli(tmp_path, "run", "--config", str(agv_cfg)))
        assert invoices_by_source(work) == {"agv": 32, "sw": 20}
        assert invoices_by_source(published) == {"agv": 32, "sw": 20}

        # drop-source without --yes only lists what would go
        dry = cli(tmp_path, "drop-source", "--config", str(sw_cfg), "--source", "agv")
        assert dry.returncode == 1, dry.stdout + dry.stderr
        assert "would remove: main.invoices: 32 rows of source 'agv'" in dry.stdout
        assert "pass --yes" in dry.stdout and invoices_by_source(work) == {"agv": 32, "sw": 20}
        # unknown source: a clear error, nothing touched
        unknown = cli(tmp_path, "drop-source", "--config", str(sw_cfg), "--source", "nope", "--yes")
        assert unknown.returncode == 1 and "source 'nope' has nothing in" in unknown.stderr
        assert "Traceback" not in unknown.stderr

        out = ok(cli(tmp_path, "drop-source", "--config", str(sw_cfg), "--source", "agv", "--yes"))
        for text in ("removed: main.invoices: 32 rows of source 'agv'", "removed: main.invoice_lines:",
                     "removed: main.invoice_history:", "removed: schema agv (", "_raw_invoices 32 rows",
                     "removed: cursor at "):
            assert text in out, (text, out)
        con = duckdb.connect(str(work), read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'agv'").fetchone()[0] == 0
            assert con.execute("SELECT count(*) FROM main._pipeline_cursors WHERE source_name = 'agv'").fetchone()[0] == 0
            for table in ("invoices", "invoice_lines", "invoice_tax_lines", "invoice_installments", "invoice_history"):
                assert con.execute(f"SELECT count(*) FROM main.{table} WHERE source_name = 'agv'").fetchone()[0] == 0
            assert con.execute("SELECT count(*) FROM main.invoices WHERE source_name = 'sw'").fetchone()[0] == 20
        finally:
            con.close()
        # the next publish (any config's run) drops it from the snapshot and the lake
        ok(cli(tmp_path, "run", "--config", str(sw_cfg)))
        assert invoices_by_source(published) == {"sw": 20}
        assert lake_by_source(tmp_path) == {"sw": 20}
        assert not (tmp_path / "data" / "parquet" / "agv").exists()

        # a dropped source that returns is whole again (loaded from start_date, raw tables included)
        ok(cli(tmp_path, "run", "--config", str(agv_cfg)))
        assert invoices_by_source(work) == invoices_by_source(published) == lake_by_source(tmp_path) == {"agv": 32, "sw": 20}
        assert ds.dataset(str(tmp_path / "data" / "parquet" / "agv" / "invoices"), format="parquet").count_rows() == 32


def test_aging_snapshot_of_one_config_keeps_the_other_configs_sources(tmp_path: Path) -> None:
    """The aging asset computes the day for its config's sources: it must not erase the others' rows."""
    from .fake_source import FakeSource, fake_config_block, invoice
    from invoice_pipeline.pipeline import run_source

    app = parse_config({"warehouse": warehouse_block(tmp_path), "sources": {"a": fake_config_block(),
                                                                            "b": fake_config_block()}})
    wh = Warehouse(app.warehouse)
    for name in ("a", "b"):
        run_source(app, name, warehouse=wh, source=FakeSource(name, app.sources[name], [invoice(n) for n in range(4)]))
    with wh.writer() as con:  # the fake source's invoices are paid: make them owed
        con.execute("UPDATE main.invoice_history SET balance_due = 7")
    day = date.today()
    build_aging_snapshot(wh, day, sources=["a", "b"])
    with wh.reader() as con:
        before = dict(con.execute("SELECT source_name, sum(invoice_count) FROM main.ar_aging_snapshot GROUP BY 1").fetchall())
    assert set(before) == {"a", "b"}
    build_aging_snapshot(wh, day, sources=["a"])  # the run of a config that holds only 'a'
    with wh.reader() as con:
        after = dict(con.execute("SELECT source_name, sum(invoice_count) FROM main.ar_aging_snapshot GROUP BY 1").fetchall())
    assert after == before


# -- overlapping paths ------------------------------------------------------------------------------
OVERLAPS = {
    # case: (warehouse keys relative to tmp_path, where link/ is a symlink to data/; texts of the message)
    "same file": ({"duckdb_path": "data/w.duckdb", "published_path": "data/w.duckdb"},
                  ["'warehouse.duckdb_path' and 'warehouse.published_path' name the same file"]),
    "same file, relative and via ..": ({"duckdb_path": "data/w.duckdb", "published_path": "data/sub/../w.duckdb"},
                                       ["'warehouse.duckdb_path' and 'warehouse.published_path' name the same file"]),
    "same file via a symlinked folder": ({"duckdb_path": "data/w.duckdb", "published_path": "link/w.duckdb"},
                                         ["'warehouse.duckdb_path' and 'warehouse.published_path' name the same file"]),
    "published is the WAL": ({"duckdb_path": "data/w.duckdb", "published_path": "data/w.duckdb.wal"},
                             ["'warehouse.duckdb_path' and 'warehouse.published_path'", "WAL"]),
    "working db is publish's temporary file": (
        {"duckdb_path": "data/.p.duckdb.tmp-x", "published_path": "data/p.duckdb"},
        ["'warehouse.published_path' and 'warehouse.duckdb_path'"]),
    "lake is the database file": ({"duckdb_path": "data/w.duckdb", "parquet_dir": "data/w.duckdb"},
                                  ["'warehouse.parquet_dir' and 'warehouse.duckdb_path' overlap"]),
    "lake contains the published file": ({"published_path": "data/lake/p.duckdb", "parquet_dir": "data/lake"},
                                         ["'warehouse.parquet_dir' and 'warehouse.published_path' overlap"]),
    "lake inside the spill folder": ({"duckdb_path": "data/w.duckdb", "parquet_dir": "data/w.duckdb.tmp/lake"},
                                     ["'warehouse.parquet_dir' and 'warehouse.duckdb_path' overlap"]),
}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_overlapping_warehouse_paths_are_refused_in_config_validation(tmp_path: Path, case: str) -> None:
    keys, must = OVERLAPS[case]
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    warehouse = {"duckdb_path": "data/w.duckdb", "published_path": "data/pub/w.duckdb", "parquet_dir": "data/parquet",
                 **keys}
    from .fake_source import fake_config_block

    with pytest.raises(ConfigError) as err:
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            parse_config({"warehouse": warehouse, "sources": {"a": fake_config_block()}})
        finally:
            os.chdir(cwd)
    for text in must:
        assert text in str(err.value), (text, str(err.value))


def test_published_path_equal_to_duckdb_path_is_refused_by_the_cli_before_anything_is_written(tmp_path: Path) -> None:
    with AGVANCE(size=5) as sim:
        config = write_config(tmp_path, "bad", {"agv": sim.source_config()},
                              published_path=str(tmp_path / "data" / "x" / ".." / "warehouse.duckdb"))
        result = cli(tmp_path, "run", "--config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "configuration error" in output and "'warehouse.duckdb_path' and 'warehouse.published_path'" in output
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # refused before anything ran
