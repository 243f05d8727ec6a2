"""Agvance client against a tampered simulator (answers whose Count disagrees with their records),
and both silent-loss cases of CRM.COM and Agvance through the real CLI in a subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from invoice_pipeline.config import parse_config
from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.agvance.client import COUNT_ATTEMPTS, AgvanceConfig, AgvanceSource
from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS as AgvanceSimulator
from invoice_pipeline.sources.base import SourceRecord, Window
from invoice_pipeline.sources.crmcom.simulator import CrmcomSimulator
from invoice_pipeline.warehouse import Warehouse

START = datetime(2024, 1, 1, tzinfo=UTC)
LIST = "/api/Invoice/GetInvoicesList"


def make_source(sim: Any, **overrides: Any) -> AgvanceSource:
    cfg = AgvanceConfig.model_validate({**sim.source_config(), **overrides})
    http = HttpClient("agv", sim.base_url, max_retries=2, backoff_initial=0.01, backoff_max=0.05, secrets=cfg.secrets())
    return AgvanceSource("agv", cfg, http=http)


def extract(src: AgvanceSource) -> list[SourceRecord]:
    return [r for batch in src.extract(Window(START, datetime.now(UTC))) for r in batch]


def test_an_answer_cut_short_is_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    with AgvanceSimulator(size=200, knobs=Knobs(retry_after=0), max_results=80) as sim:
        sim.short_responses = 2
        src = make_source(sim, window_size="30d", concurrency=1)
        with caplog.at_level(logging.INFO, "invoice_pipeline.agvance"):
            records = extract(src)
        assert {r.invoice_id for r in records} == set(sim.invoices)
        assert src.stats.extra["count_mismatches"] == 2 and sim.short_responses == 0
        assert "asking again" in caplog.text
        assert "distinct keys" in caplog.text and f"{len(sim.invoices)} distinct keys" in caplog.text


def test_an_answer_that_stays_short_fails_the_run() -> None:
    with AgvanceSimulator(size=200, knobs=Knobs(retry_after=0), max_results=80) as sim:
        sim.short_responses = 10**6
        src = make_source(sim, window_size="30d", concurrency=1)
        before = sim.requests[LIST]
        with pytest.raises(SourceError, match=rf"Count says \d+ invoices but InvoiceRecords holds \d+ "
                                              rf"\(asked {COUNT_ATTEMPTS} times\)"):
            extract(src)
        # Bounded: each window asked COUNT_ATTEMPTS times (one worker keeps two windows in flight).
        calls = sim.requests[LIST] - before
        assert calls % COUNT_ATTEMPTS == 0 and COUNT_ATTEMPTS <= calls <= 2 * COUNT_ATTEMPTS


# -- the CLI in a subprocess -------------------------------------------------------------------


def run_cli(tmp_path: Path, sources: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    warehouse = {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "pub" / "w.duckdb"),
                 "parquet_dir": str(tmp_path / "parquet")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"warehouse": warehouse, "sources": sources}))
    environ = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    environ["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(path)],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=240)


def loaded(tmp_path: Path, sources: dict[str, Any], name: str) -> tuple[set[str], datetime | None]:
    app = parse_config({"warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"),
                                      "published_path": str(tmp_path / "pub" / "w.duckdb"),
                                      "parquet_dir": str(tmp_path / "parquet")}, "sources": sources})
    wh = Warehouse(app.warehouse)
    if not (tmp_path / "w.duckdb").exists():
        return set(), None
    with wh.reader() as con:
        tables = {r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main'").fetchall()}
        ids = set()
        if "invoices" in tables:
            ids = {r[0] for r in con.execute("select invoice_id from main.invoices where source_name = ?",
                                             [name]).fetchall()}
        cursor = wh.cursor(con, name) if "_pipeline_cursors" in tables else None
    return ids, cursor


def test_cli_runs_load_everything_or_fail_without_moving_the_cursor(tmp_path: Path) -> None:
    crm_kw = dict(page_cap=100, empty_pages=2, ar_filter_required=True)
    with CrmcomSimulator(size=450, knobs=Knobs(retry_after=0), **crm_kw) as crm, \
            AgvanceSimulator(size=150, knobs=Knobs(retry_after=0), max_results=60) as agv:
        sources = {"crm": {**crm.source_config(), "page_size": 200},
                   "agv": {**agv.source_config(), "max_retries": 1, "window_size": "30d"}}
        agv.short_responses = 10**6  # every answer loses a record on its way
        first = run_cli(tmp_path, sources)
        output = first.stdout + first.stderr
        assert first.returncode == 1, output
        assert "Traceback" not in output and "Count says" in output and "agv" in output, output
        # CRM.COM: a 100-item cap while 200 were asked, two empty pages mid-listing and a refused
        # unfiltered account list used to load a fraction silently; now everything.
        crm_ids, crm_cursor = loaded(tmp_path, sources, "crm")
        assert crm_ids == {inv.id for inv in crm.invoices} and crm_cursor is not None
        # Agvance: the run failed; nothing loaded and its cursor not set.
        agv_ids, agv_cursor = loaded(tmp_path, sources, "agv")
        assert agv_ids == set() and agv_cursor is None

        agv.short_responses = 0
        second = run_cli(tmp_path, {"agv": sources["agv"]})
        assert second.returncode == 0, second.stdout + second.stderr
        agv_ids, agv_cursor = loaded(tmp_path, sources, "agv")
        assert agv_ids == set(agv.invoices) and agv_cursor is not None
