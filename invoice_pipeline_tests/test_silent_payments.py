"""Silent payments (balance changed, last-modified unchanged) converge through the real CLI.

Two `invoice-pipeline run` subprocesses with the simulators' `mutate(payments=N)` between them:
after the second run every paid invoice has its new balance in main.invoices and in the published
snapshot, for all four sources (issue 21)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import yaml

from invoice_pipeline.pipeline import build_source
from invoice_pipeline.sources.base import Window
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline_tests.conftest import make_app

SOURCES = ["oracle_occ", "crmcom", "softwareone", "agvance"]


def _cli_run(tmp_path: Path, config_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INVOICE_PIPELINE_CONFIG"}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    return subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", "run", "--config", str(config_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _balances(db: Path) -> dict[tuple[str, str], Decimal]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT source_name, invoice_id, balance_due FROM main.invoices").fetchall()
    return {(s, i): b for s, i, b in rows}


def _truth(app, name: str, ids: list[str]) -> dict[tuple[str, str], Decimal]:
    """Balance of these invoices as the source serves them now, read the ordinary way (full window)."""
    src = build_source(app, name)
    try:
        window = Window(app.sources[name].start_date, utc_now() + timedelta(days=1))
        return {(name, r.invoice_id): src.to_conformed(r.payload).invoice["balance_due"]
                for batch in src.extract(window) for r in batch if r.invoice_id in ids}
    finally:
        src.close()


def test_silent_payments_converge_through_the_cli_for_every_source(tmp_path: Path) -> None:
    sims = {t: importlib.import_module(f"invoice_pipeline.sources.{t}.simulator").SIMULATOR_CLASS(size=40)
            for t in SOURCES}
    for sim in sims.values():
        sim.__enter__()
    try:
        sources = {t: sim.source_config() for t, sim in sims.items()}
        app = make_app(tmp_path, sources)
        config = {"warehouse": {"duckdb_path": str(app.warehouse.duckdb_path),
                                "published_path": str(app.warehouse.published_path),
                                "parquet_dir": str(app.warehouse.parquet_dir)},
                  "sources": sources}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        first = _cli_run(tmp_path, path)
        assert first.returncode == 0, first.stdout + first.stderr
        before = _balances(Path(app.warehouse.duckdb_path))

        paid = {t: sim.mutate(payments=5, seed=11)["payments"] for t, sim in sims.items()}
        assert all(len(ids) == 5 for ids in paid.values()), paid
        truth: dict[tuple[str, str], Decimal] = {}
        for t, ids in paid.items():
            truth.update(_truth(app, t, ids))
        assert len(truth) == 20
        assert all(truth[k] != before[k] for k in truth)  # the payments did move the balances

        second = _cli_run(tmp_path, path)
        assert second.returncode == 0, second.stdout + second.stderr
        main = _balances(Path(app.warehouse.duckdb_path))
        published = _balances(Path(app.warehouse.published_path))
        stale = {k: (before[k], main[k], truth[k]) for k in truth if main[k] != truth[k]}
        assert not stale, f"paid invoices kept their old balance in main.invoices (before, now, truth): {stale}"
        assert {k: published[k] for k in truth} == truth

        # What each re-poll cost, as its materialization records it.
        import dagster as dg

        with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
            meta = {}
            for t in SOURCES:
                event = instance.get_latest_materialization_event(dg.AssetKey([t, "open_invoices_repoll"]))
                meta[t] = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
        assert meta["crmcom"]["api_calls"] == 0 and meta["crmcom"]["skipped_compared_by_load"] > 0  # its load compared
        assert meta["oracle_occ"]["detail_calls"] == 5 and meta["oracle_occ"]["pages"] >= 1  # the paid ones only
        for t in ("softwareone", "agvance"):
            assert meta[t]["api_calls"] >= 1 and meta[t]["open_invoices"] > 0
    finally:
        for sim in sims.values():
            sim.__exit__(None, None, None)
