"""A real `invoice-pipeline run`, SIGKILLed at each stage, never blocks the next run, which then
leaves the warehouse exactly as one uninterrupted run does.

Each run is a subprocess on one persistent DAGSTER_HOME (as cron would run it). The run is frozen at
a named point (invoice_pipeline/testpoints.py) and killed there with SIGKILL: no handler, no cleanup,
as an OOM kill or a pod eviction. The next run must finish within a bound (a wedged run would spin
for ever) and the killed run must show as failed in the Dagster instance, holding no pool slot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from invoice_pipeline.config import parse_config
from invoice_pipeline.runner import PID_TAG, WAREHOUSE_TAG
from invoice_pipeline.simulate import config_document, start_simulators
from invoice_pipeline.testpoints import POINTS

from .conftest import table_rows

SIZE = 25
NEXT_RUN_BOUND_S = 120  # generous for a loaded 2-core CI machine; a wedged run never ends
# Tables whose rows name the run or its clock (history's valid_from, the run log, publishes).
SKIP = {"_pipeline_runs", "_pipeline_cursors", "_pipeline_publishes", "_pipeline_schema", "invoice_history",
        "ar_aging_snapshot", "_raw_invoices",
        "_schema_fields"}  # the drift record: which run first saw each field (drift.py)


def _config(root: Path, doc: dict) -> Path:
    warehouse = {"duckdb_path": str(root / "warehouse.duckdb"),
                 "published_path": str(root / "published" / "warehouse.duckdb"),
                 "parquet_dir": str(root / "parquet")}
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**doc, "warehouse": warehouse}))
    return path


def _run(config: Path, home: Path, pause_at: str | None = None, pause_file: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_")}
    env["DAGSTER_HOME"] = str(home)
    if pause_at:
        env.update(INVOICE_PIPELINE_PAUSE_AT=pause_at, INVOICE_PIPELINE_PAUSE_FILE=str(pause_file))
    return subprocess.Popen([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config)],
                            cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=NEXT_RUN_BOUND_S)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_at(config: Path, home: Path, point: str) -> int:
    pause_file = config.parent / f"paused-{point}"
    proc = _run(config, home, point, pause_file)
    deadline = time.monotonic() + NEXT_RUN_BOUND_S
    while not pause_file.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before reaching {point}: {proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"run never reached {point}"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    return proc.pid


def _state(config: Path) -> dict:
    app = parse_config({**yaml.safe_load(config.read_text())})
    schemas = ("main", *app.sources)
    rows = table_rows(app, schemas, SKIP)
    with duckdb.connect(str(app.warehouse.published_path), read_only=True) as con:
        published = con.execute("SELECT source_name, invoice_id, total_amount, balance_due FROM invoices ORDER BY ALL").fetchall()
    return {"tables": rows, "published": published}


def test_a_run_killed_at_any_stage_never_blocks_the_next(tmp_path: Path) -> None:
    with ExitStack() as stack:
        sims = start_simulators(stack, size=SIZE)
        doc = config_document(sims)
        reference = _config(tmp_path / "reference", doc)
        _finish(_run(reference, tmp_path / "reference" / "dagster_home"))
        expected = _state(reference)

        for point in POINTS:  # each in a warehouse of its own, so every point is reached in a first run
            root = tmp_path / point
            crashed, home = _config(root, doc), root / "dagster_home"
            pid = _kill_at(crashed, home, point)
            started = time.monotonic()
            _finish(_run(crashed, home))
            assert time.monotonic() - started < NEXT_RUN_BOUND_S
            assert _state(crashed) == expected, f"warehouse after a kill at {point} differs from an uninterrupted run"

            with dg.DagsterInstance.from_config(str(home)) as instance:
                killed = [r for r in instance.get_runs() if r.tags.get(PID_TAG) == str(pid)]
                assert [r.status for r in killed] == [dg.DagsterRunStatus.FAILURE], point
                assert killed[0].tags[WAREHOUSE_TAG] == str((root / "warehouse.duckdb").resolve())
                # CLI runs take no pool slot, so none can be left behind by a killed one.
                assert not instance.event_log_storage.get_concurrency_info("duckdb_write").claimed_slots


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_says_it_was_interrupted(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM: one line saying so and exit 130, not a step failure with an empty reason."""
    with ExitStack() as stack:
        sims = start_simulators(stack, size=SIZE, types=["agvance"])
        config = _config(tmp_path, config_document(sims))
        pause_file = tmp_path / "paused"
        proc = _run(config, tmp_path / "dagster_home", "extract", pause_file)
        deadline = time.monotonic() + NEXT_RUN_BOUND_S
        while not pause_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.1)
        proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130, out[-3000:]
        assert "interrupted (Ctrl-C or SIGTERM) during step agvance_main__invoices" in out, out[-3000:]
        assert "FAILED" not in out, out[-3000:]
        _finish(_run(config, tmp_path / "dagster_home"))
