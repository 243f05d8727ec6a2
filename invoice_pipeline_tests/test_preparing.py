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


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle")


def _raising_prepare(*args, **kwargs):
    raise _Unpicklable("mapping blew up")


def test_worker_replies_in_order_and_reports_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker loop itself: a prepared batch comes back whole, an error (even one that cannot be
    pickled) comes back as an error with its message, and the next batch still works."""
    import io
    import pickle
    from datetime import UTC, datetime

    import orjson

    from invoice_pipeline import preparing
    from invoice_pipeline_tests.fake_source import fake_config_block, invoice

    app = make_app(tmp_path, {"o": fake_config_block()})
    source = OracleOccSource("o", app.sources["o"])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    packed = [(str(n), now, orjson.dumps(invoice(n))) for n in (1, 2)]
    requests = io.BytesIO()
    for message in (preparing._rebuild_args(source), (packed, ("run", now, None)), (packed, ("run", now, None))):
        pickle.dump(message, requests)
    requests.seek(0)
    results = io.BytesIO()
    real_prepare = preparing.prepare_batch
    calls = iter([_raising_prepare, real_prepare])
    monkeypatch.setattr(preparing, "prepare_batch", lambda *a, **k: next(calls)(*a, **k))
    preparing._serve(requests, results)
    results.seek(0)
    first_ok, first = pickle.load(results)
    second_ok, second = pickle.load(results)
    assert not first_ok and isinstance(first, PipelineError) and "mapping blew up" in str(first)
    assert second_ok and second[0].raw.num_rows == 2  # both payloads prepared (kept raw)


def test_arrow_uses_the_system_allocator_unless_told_otherwise() -> None:
    """Arrow's mimalloc pool keeps freed memory (publish peaks ~150 MB higher); an operator's choice wins."""
    import subprocess
    import sys

    probe = "import invoice_pipeline, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    ours = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.strip() == "system"
    theirs = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"},
                            capture_output=True, text=True, check=True)
    assert theirs.stdout.strip() == "jemalloc"
