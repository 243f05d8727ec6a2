"""Deletions detected from the CLI: `run` reconciles when the source's reconcile_schedule says it is
due (so cron users without the daemon get deletions too), `reconcile` runs it at once, and the guard's
override works once."""

from __future__ import annotations

from pathlib import Path

import duckdb
import yaml

from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

from .conftest import cli_in as _cli

SIZE = 40




def _config(tmp_path: Path, sim, **overrides) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "warehouse": {"duckdb_path": str(tmp_path / "w.duckdb"), "published_path": str(tmp_path / "p" / "w.duckdb"),
                      "parquet_dir": str(tmp_path / "parquet")},
        "sources": {"agv": {**sim.source_config(), **overrides}}}))


def _deleted(tmp_path: Path) -> list[str]:
    with duckdb.connect(str(tmp_path / "p" / "w.duckdb"), read_only=True) as con:
        return sorted(r[0] for r in con.execute("SELECT invoice_id FROM invoices WHERE is_deleted").fetchall())


def test_run_reconciles_when_due_and_reconcile_runs_now(tmp_path: Path) -> None:
    with SIMULATOR_CLASS(size=SIZE) as sim:
        _config(tmp_path, sim)  # default schedule: daily at 03:00 UTC
        first = _cli(tmp_path, "run")
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        assert "deletion reconciliation due for agv" in first.stderr  # never reconciled: due

        sim.mutate(deletes=2, seed=3)
        second = _cli(tmp_path, "run")
        assert second.returncode == 0, second.stderr[-2000:]
        assert "deletion reconciliation due" not in second.stderr  # reconciled since the last 03:00 tick
        assert _deleted(tmp_path) == []

        now = _cli(tmp_path, "reconcile", "--source", "agv")
        assert now.returncode == 0, now.stdout[-2000:] + now.stderr[-2000:]
        assert "marked deleted 2" in now.stdout, now.stdout
        assert len(_deleted(tmp_path)) == 2


def test_always_reconciles_on_every_run_and_the_guard_can_be_overridden_once(tmp_path: Path) -> None:
    with SIMULATOR_CLASS(size=SIZE) as sim:
        _config(tmp_path, sim, reconcile_schedule="always", reconcile_max_deleted_share=0.1)
        assert _cli(tmp_path, "run").returncode == 0
        sim.mutate(deletes=15, seed=5)  # more than 10% and more than the guard's minimum of 10
        refused = _cli(tmp_path, "run")
        assert refused.returncode == 1
        assert "would be marked deleted" in refused.stdout and "--allow-mass-deletion" in refused.stdout, refused.stdout
        assert _deleted(tmp_path) == []
        accepted = _cli(tmp_path, "reconcile", "--allow-mass-deletion")
        assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
        assert len(_deleted(tmp_path)) == 15
