"""`invoice-pipeline run --dry-run` makes no call and no write; `run --from --to` backfills without
moving the cursor. Through the CLI, against the SoftwareOne simulator."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import yaml

from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS

from .conftest import cli_in as _cli

SIZE = 30




def _state(tmp_path: Path) -> tuple[object, list[tuple]]:
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        cursor = con.execute("SELECT cursor_at FROM main._pipeline_cursors WHERE source_name = 'swo'").fetchone()[0]
        runs = con.execute("SELECT mode, window_start, window_end, status FROM main._pipeline_runs "
                           "ORDER BY finished_at").fetchall()
    return cursor, runs


def test_dry_run_then_backfill(tmp_path: Path) -> None:
    with SIMULATOR_CLASS(size=SIZE) as sim:
        config = sim.source_config()
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({
            "warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "p" / "w.duckdb"),
                          "parquet_dir": str(tmp_path / "parquet")},
            "sources": {"swo": config}}))

        dry = _cli(tmp_path, "run", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "swo (softwareone): incremental window" in dry.stdout, dry.stdout
        assert "none (first run: from start_date)" in dry.stdout
        assert "ge(audit.created.at" in dry.stdout and "$meta.pagination.total" in dry.stdout
        assert sum(sim.requests.values()) == 0, dict(sim.requests)
        assert not (tmp_path / "w.duckdb").exists() and not (tmp_path / "dagster_home").exists()

        assert _cli(tmp_path, "run").returncode == 0
        cursor, runs = _state(tmp_path)
        calls = sum(sim.requests.values())
        dry = _cli(tmp_path, "run", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        lookback = timedelta(minutes=10)  # the config default
        assert f"incremental window {(cursor - lookback).isoformat()} .." in dry.stdout, dry.stdout
        assert sum(sim.requests.values()) == calls
        assert _state(tmp_path) == (cursor, runs)  # nothing written

        missing = _cli(tmp_path, "run", "--from", "2024-01-01T00:00:00Z")
        assert missing.returncode == 2 and "--to is missing" in missing.stderr, missing.stderr
        backwards = _cli(tmp_path, "run", "--from", "2024-02-01T00:00:00Z", "--to", "2024-01-01T00:00:00Z")
        assert backwards.returncode == 2 and "is after" in backwards.stderr, backwards.stderr
        bad = _cli(tmp_path, "run", "--from", "yesterday", "--to", "2024-01-01T00:00:00Z")
        assert bad.returncode == 2 and "not an ISO-8601 timestamp" in bad.stderr, bad.stderr

        start, end = "2020-01-01T00:00:00+00:00", "2030-01-01T00:00:00+00:00"
        dry = _cli(tmp_path, "run", "--dry-run", "--from", start, "--to", end)
        assert f"backfill window {start} .. {end}" in dry.stdout and "the cursor would not move" in dry.stdout, dry.stdout
        backfill = _cli(tmp_path, "run", "--from", start, "--to", end)
        assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-2000:]
        after_cursor, after_runs = _state(tmp_path)
        assert after_cursor == cursor  # a backfill never moves the cursor
        (backfill_run,) = [r for r in after_runs if r[0] == "backfill"]
        mode, window_start, window_end, status = backfill_run
        assert status == "success"
        assert window_start.isoformat() == start and window_end.isoformat() == end
