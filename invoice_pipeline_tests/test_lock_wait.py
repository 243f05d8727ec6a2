"""A run that finds the warehouse locked waits asleep, says who holds the lock, and gives up after
`warehouse.lock_timeout` with a message saying what to do, through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

HOLDER = """
import sys, time
from pathlib import Path
from invoice_pipeline.writer_lock import acquire_writer_lock
lock = acquire_writer_lock(Path(sys.argv[1]), 5)
print("held", flush=True)
time.sleep(120)
"""


def test_a_locked_warehouse_is_waited_for_asleep_then_refused_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with SIMULATOR_CLASS(size=5) as sim:
            (tmp_path / "c.yaml").write_text(yaml.safe_dump({
                "warehouse": {"duckdb_path": str(db), "published_path": str(tmp_path / "p.duckdb"),
                              "parquet_dir": str(tmp_path / "parquet"), "lock_timeout": "8s"},
                "sources": {"agv": sim.source_config()}}))
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_")},
                   "DAGSTER_HOME": str(tmp_path / "dagster_home")}
            started = time.monotonic()
            run = subprocess.Popen([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(tmp_path / "c.yaml")],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(6)  # waiting by now (start-up ~2-4 s, then the lock): it must be asleep, not spinning
            cpu = psutil.Process(run.pid).cpu_percent(interval=1.0)
            out = run.communicate(timeout=120)[0]
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 1, out[-3000:]
    assert cpu < 30, f"the waiting run used {cpu}% CPU"
    assert f"held by pid {holder.pid}" in out, out[-3000:]  # the progress line names the holder
    assert "still locked after" in out and f"pid {holder.pid}" in out and "warehouse.lock_timeout" in out, out[-3000:]
    assert elapsed < 90
