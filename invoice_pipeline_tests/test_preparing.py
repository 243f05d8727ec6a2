"""Batches prepared on a second process load exactly what in-process preparation loads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from invoice_pipeline.errors import PipelineError
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.oracle_occ.client import OracleOccSource
from invoice_pipeline.sources.oracle_occ.simulator import SIMULATOR_CLASS
from invoice_pipeline.warehouse import Warehouse
from invoice_pipeline_tests.conftest import make_app, table_rows

# run log, cursors: per run by nature; history: its validity starts when each run saw a version
PER_RUN_TABLES = {"_pipeline_runs", "_pipeline_cursors", "_pipeline_publishes", "invoice_history"}


def test_second_process_loads_the_same_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with SIMULATOR_CLASS(size=120, knobs=Knobs(retry_after=0)) as sim:
        block = {**sim.source_config(), "page_size": 25, "batch_size": 20}
        inline = make_app(tmp_path / "inline", {"ora": {**block, "prepare_processes": 0}})
        parallel = make_app(tmp_path / "parallel", {"ora": {**block, "prepare_processes": 1}})
        with caplog.at_level(logging.INFO, logger="invoice_pipeline.pipeline"):
            first = run_source(parallel, "ora")
        assert "preparing batches on 1 more process" in caplog.text
        second = run_source(inline, "ora")
        assert first.invoices_loaded == second.invoices_loaded == 120
        assert first.rows_written == second.rows_written
        assert (first.extra["preparing_processes"], second.extra["preparing_processes"]) == (1, 0)
        expected = table_rows(inline, ("ora", "main"), PER_RUN_TABLES)
        assert expected["main.invoices"] and expected["ora.invoices"]
        assert table_rows(parallel, ("ora", "main"), PER_RUN_TABLES) == expected


class DyingOracle(OracleOccSource):
    """Oracle whose mapping kills the process it runs in, unless that is the test's own process."""

    def to_conformed(self, payload):
        if os.getpid() != int(os.environ["TEST_PREPARING_PARENT_PID"]):
            os._exit(3)
        return super().to_conformed(payload)


def test_dead_preparing_process_fails_the_run_and_keeps_the_cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PREPARING_PARENT_PID", str(os.getpid()))  # inherited by the spawned worker
    with SIMULATOR_CLASS(size=60, knobs=Knobs(retry_after=0)) as sim:
        app = make_app(tmp_path, {"ora": {**sim.source_config(), "page_size": 20, "batch_size": 20}})
        with pytest.raises(PipelineError, match="process preparing batches died.*cursor did not move"):
            run_source(app, "ora", source=DyingOracle("ora", app.sources["ora"]))
        with Warehouse(app.warehouse).reader() as con:
            assert con.execute("SELECT count(*) FROM main._pipeline_cursors").fetchone()[0] == 0
            assert con.execute("SELECT status FROM main._pipeline_runs").fetchall() == [("failed",)]
