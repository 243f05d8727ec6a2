"""A run killed with SIGKILL at any point, then a normal run, gives exactly the uninterrupted warehouse.

The killed run is a real subprocess that SIGKILLs itself (uncatchable: no finally, no atexit, no
rollback in Python) at a seeded point: before its N-th API call (during extraction) or before its
K-th SQL statement inside a batch write (mid-transaction). Afterwards the DuckDB file must open,
and a normal run must leave every table equal to the uninterrupted reference, volatile columns
(load times, run ids) aside. Both a first load and an incremental run after changes are killed.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from invoice_pipeline.config import AppConfig, parse_config
from invoice_pipeline.http import HttpClient
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.simulation import Knobs
from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS
from invoice_pipeline.warehouse import Warehouse
from invoice_pipeline_tests.conftest import table_rows

SKIP_TABLES = {"_pipeline_runs", "_pipeline_cursors"}  # run log and cursor: per-run by nature

CHILD = r'''
import json, os, signal, sys
from invoice_pipeline.config import parse_config
from invoice_pipeline.http import HttpClient
from invoice_pipeline.pipeline import run_source
from invoice_pipeline.warehouse import Warehouse

config, kind, at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
count = [0]

def tick():
    count[0] += 1
    if count[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)

if kind == "http":
    request = HttpClient.request
    def counted_request(self, *a, **k):
        tick()
        return request(self, *a, **k)
    HttpClient.request = counted_request
else:
    class Killing:
        def __init__(self, con): self._con = con
        def __getattr__(self, name): return getattr(self._con, name)
        def execute(self, *a, **k):
            tick()
            return self._con.execute(*a, **k)
    write_batch = Warehouse.write_batch
    Warehouse.write_batch = lambda self, con, batch: write_batch(self, Killing(con), batch)

run_source(parse_config(config), "src")
print("run completed: the kill point was never reached")
'''


class Counter:
    """Counts API calls and SQL statements inside batch writes of an in-process run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.http = self.sql = 0
        counter = self
        request, write_batch = HttpClient.request, Warehouse.write_batch

        def counted_request(self: HttpClient, *a: Any, **k: Any) -> Any:
            counter.http += 1
            return request(self, *a, **k)

        class Counting:
            def __init__(self, con: Any):
                self._con = con

            def __getattr__(self, name: str) -> Any:
                return getattr(self._con, name)

            def execute(self, *a: Any, **k: Any) -> Any:
                counter.sql += 1
                return self._con.execute(*a, **k)

        monkeypatch.setattr(HttpClient, "request", counted_request)
        monkeypatch.setattr(Warehouse, "write_batch", lambda wh, con, batch: write_batch(wh, Counting(con), batch))

    def reset(self) -> None:
        self.http = self.sql = 0


def snapshot(app: AppConfig) -> dict[str, list]:
    """Every table of main and the source schema, volatile columns aside, in a stable order."""
    out = table_rows(app, ("main", "src"), SKIP_TABLES)
    with Warehouse(app.warehouse).reader() as con:
        out["cursor_set"] = [con.execute("select count(*) from main._pipeline_cursors where source_name = 'src' "
                                         "and cursor_at is not null").fetchone()[0]]
    return out


def make(tmp_path: Path, name: str, sim: Any) -> tuple[AppConfig, dict[str, Any]]:
    raw = {"warehouse": {"duckdb_path": str(tmp_path / f"{name}.duckdb"), "published_path": str(tmp_path / f"{name}.pub"),
                         "parquet_dir": str(tmp_path / f"{name}_parquet")},
           "sources": {"src": {**sim.source_config(), "page_size": 10}}}
    return parse_config(raw), raw


def killed_run(raw: dict[str, Any], kind: str, at: int) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(raw), kind, str(at)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, (kind, at, child.stdout, child.stderr[-2000:])
    path = raw["warehouse"]["duckdb_path"]
    con = duckdb.connect(path)  # the file opens (and replays its WAL) after a kill at any point
    try:
        con.execute("select count(*) from information_schema.tables").fetchone()
    finally:
        con.close()


def test_sigkill_at_seeded_points_then_a_normal_run_gives_the_same_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20250601)
    with SIMULATOR_CLASS(size=100, knobs=Knobs(seed=5)) as sim:
        ref_app, _ = make(tmp_path, "reference", sim)
        counter = Counter(monkeypatch)
        run_source(ref_app, "src")  # the uninterrupted first load
        calls, statements = counter.http, counter.sql
        assert calls >= 8 and statements >= 20
        reference = snapshot(ref_app)
        assert len(reference["main.invoices"]) == 100

        # kills during the first load: one during extraction, one in the middle of a batch write
        cases = [("http", rng.randint(2, calls - 1)), ("write", rng.randint(statements // 3, statements - 2))]
        victims = []
        for n, (kind, at) in enumerate(cases):
            app, raw = make(tmp_path, f"killed{n}", sim)
            killed_run(raw, kind, at)
            run_source(app, "src")
            assert snapshot(app) == reference, (kind, at)
            victims.append((app, raw))

        # the same during an incremental run after changes at the source (updates, voids, deleted lines)
        sim.mutate(updates=8, new=4, voids=3, delete_lines=3)
        counter.reset()
        run_source(ref_app, "src")
        calls, statements = counter.http, counter.sql
        reference = snapshot(ref_app)
        for (app, raw), kind in zip(victims, ("write", "http")):
            at = rng.randint(1, statements - 1) if kind == "write" else rng.randint(1, max(1, calls - 1))
            killed_run(raw, kind, at)
            run_source(app, "src")
            assert snapshot(app) == reference, (kind, at)


def test_replay_rebuilds_a_real_source_from_raw_payloads_alone(tmp_path: Path) -> None:
    """CRM.COM: two runs with changes in between, then replay with the API gone: the same warehouse."""
    from invoice_pipeline.replay import replay_source
    from invoice_pipeline.sources.crmcom.simulator import SIMULATOR_CLASS as CrmSim

    with CrmSim(size=80, knobs=Knobs(seed=9)) as sim:
        app, _ = make(tmp_path, "replay", sim)
        run_source(app, "src")
        sim.mutate(updates=6, new=3, voids=2, delete_lines=3)
        run_source(app, "src")
    before = snapshot(app)
    assert len(before["main.invoices"]) == 83 and before["src._raw_invoices"]
    summary = replay_source(app, "src")  # the simulator is stopped: any API call would fail the replay
    assert summary.status == "success" and summary.invoices_loaded == 83
    assert snapshot(app) == before
