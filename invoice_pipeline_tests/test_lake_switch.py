"""A real `invoice-pipeline run`, SIGKILLed while it publishes the Parquet lake, leaves a whole lake.

Each publish writes every table into a new version folder and switches one pointer (lake.py), so a
kill while writing, just before or just after the switch must leave readers of the documented
paths (`<parquet_dir>/<table>`, docs/QUERYING.md) on ONE version, the old or the new, never a mix;
and the next run must remove what the killed one left (its temporary snapshot file, the version it
never switched to) and publish lake and snapshot as one version again. The run pauses at a named
point through INVOICE_PIPELINE_PAUSE_AT (invoice_pipeline/testpoints.py, honoured for tests only), and the test kills it there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import yaml

from invoice_pipeline.testpoints import PAUSE_ENV as TEST_PAUSE_ENV
from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

VERSION_IN_NAME = re.compile(r"part-(\d{8}T\d{12}Z-[0-9a-f]{6})-")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INVOICE_PIPELINE_CONFIG", TEST_PAUSE_ENV)}
    return {**env, "DAGSTER_HOME": str(tmp_path / "dagster_home"), **extra}


def run(tmp_path: Path, config: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config)],
                            cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def killed_run(tmp_path: Path, config: Path, point: str) -> None:
    """A run that pauses at `point` and is SIGKILLed there (with every process it started)."""
    log = tmp_path / f"killed-{point.replace('/', '_').replace(':', '_')}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config)],
                                cwd=tmp_path, env=environment(tmp_path, **{TEST_PAUSE_ENV: point}),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while f"paused at {point}" not in log.read_text():
            assert proc.poll() is None, f"the run ended without reaching {point}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{point} not reached: {log.read_text()[-3000:]}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # the next CLI run marks it failed (runner.fail_dead_cli_runs)


def lake_versions(lake: Path) -> dict[str, set[str]]:
    """Table path -> the versions its files belong to, read through the documented stable paths."""
    out: dict[str, set[str]] = {}
    for entry in sorted(p for p in lake.iterdir() if not p.name.startswith(("_", "."))):
        tables = [entry] if any("=" in c.name or c.suffix == ".parquet" for c in entry.iterdir()) else sorted(entry.iterdir())
        for table in tables:
            files = ds.dataset(str(table), format="parquet", partitioning="hive").files
            assert files, table
            out[str(table.relative_to(lake))] = {VERSION_IN_NAME.search(f).group(1) for f in files}
    return out


def snapshot_info(published: Path) -> tuple[str, int]:
    con = duckdb.connect(str(published), read_only=True)
    try:
        return (con.execute("SELECT snapshot_id FROM _snapshot").fetchone()[0],
                con.execute("SELECT count(*) FROM invoices").fetchone()[0])
    finally:
        con.close()


def whole_lake(lake: Path) -> tuple[str, int]:
    """The one version every table of the lake shows, and its invoice count; fails on a mix."""
    versions = lake_versions(lake)
    assert len(versions) >= 10, versions  # conformed, history, aging ..., and the source's own tables
    seen = set().union(*versions.values())
    assert len(seen) == 1, f"a mixed lake: {versions}"
    version = seen.pop()
    assert os.readlink(lake / "_current") == f"_v/{version}"
    return version, ds.dataset(str(lake / "invoices"), format="parquet", partitioning="hive").count_rows()


def test_sigkill_during_the_lake_switch_leaves_one_whole_version_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lake, published = data / "parquet", data / "published" / "warehouse.duckdb"
    with SIMULATOR_CLASS(size=30) as sim:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "warehouse": {"duckdb_path": str(data / "warehouse.duckdb"), "published_path": str(published),
                          "parquet_dir": str(lake)},
            "sources": {"agv": sim.source_config()}}))
        run(tmp_path, config)
        first, invoices = whole_lake(lake)
        assert (first, invoices) == snapshot_info(published) and invoices == 30

        # killed while writing the tables (after one of many), and with every table written, just before
        # the switch: readers still see the whole old version, and so does the snapshot
        for n, point in enumerate(["lake_write:invoice_lines", "lake_switch"], start=1):
            sim.mutate(new=1, seed=n)
            killed_run(tmp_path, config, point)
            assert whole_lake(lake) == (first, 30), point
            assert snapshot_info(published) == (first, 30), point
        leftovers = list(published.parent.glob(".warehouse.duckdb.tmp-*"))
        assert leftovers, "the killed publishes left their temporary snapshot files"
        # (each publish first removes what the one before it left: here the last killed one's version remains)
        assert len(list((lake / "_v").iterdir())) == 2

        # killed right after the switch, before the snapshot's rename: the lake is the whole new version
        killed_run(tmp_path, config, "lake_switched")
        switched, switched_invoices = whole_lake(lake)
        assert switched != first and switched_invoices == 32
        assert snapshot_info(published) == (first, 30)

        # the next run cleans up and publishes lake and snapshot as one version again
        sim.mutate(new=1, seed=9)
        run(tmp_path, config)
        last, last_invoices = whole_lake(lake)
        assert (last, last_invoices) == snapshot_info(published) and last_invoices == 33
        assert not list(published.parent.glob(".warehouse.duckdb.tmp-*"))
        assert sorted(p.name for p in (lake / "_v").iterdir()) == [switched, last]  # previous kept, the rest gone
        assert not [p for p in lake.iterdir() if ".link-" in p.name or ".old-" in p.name]
