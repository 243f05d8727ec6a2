"""Dagster wiring of the lifecycle: assets, checks, jobs and schedules, run against a simulator."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from invoice_pipeline import lifecycle
from invoice_pipeline.config import parse_config
from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.keys import (ALL_ASSETS_JOB, AGING_KEY, HISTORY_KEY, reconcile_asset_key, repoll_asset_key,
                                        source_asset_key)
from invoice_pipeline.timeutil import utc_now
from invoice_pipeline.warehouse import Warehouse

from .conftest import write_app_config
from .fake_source import fake_config_block


def test_schedules_and_automation_follow_the_config() -> None:
    app = parse_config({"sources": {"a": fake_config_block(), "b": fake_config_block()}})
    # repoll_schedule is not a SourceConfig key yet: set it the way a future config would.
    with_cron = app.sources["b"].model_copy(update={"repoll_schedule": "*/30 * * * *", "reconcile_schedule": "0 4 * * 0"})
    defs = build_definitions(app.model_copy(update={"sources": {"a": app.sources["a"], "b": with_cron}}))
    dg.Definitions.validate_loadable(defs)
    schedules = {s.name: s.cron_schedule for s in defs.schedules}
    assert schedules["a_deletion_reconciliation_schedule"] == "0 3 * * *"
    assert schedules["b_deletion_reconciliation_schedule"] == "0 4 * * 0"
    assert schedules["b_repoll_schedule"] == "*/30 * * * *" and "a_repoll_schedule" not in schedules
    assert schedules["ar_aging_snapshot_daily_schedule"] == "55 23 * * *"
    graph = defs.resolve_asset_graph()
    # Without a cron the re-poll follows every run of its source; with one it waits for the schedule.
    assert graph.get(repoll_asset_key("a")).automation_condition is not None
    assert graph.get(repoll_asset_key("b")).automation_condition is None
    assert repoll_asset_key("a") in graph.get(HISTORY_KEY).parent_keys
    assert HISTORY_KEY in graph.get(AGING_KEY).parent_keys


def test_lifecycle_jobs_against_the_simulator(in_tmp: Path) -> None:
    from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, config_file = write_app_config(in_tmp, {"swo": sim.source_config()})
        defs = build_definitions(app, str(config_file))
        instance = dg.DagsterInstance.ephemeral()
        assert defs.resolve_job_def("swo_incremental").execute_in_process(instance=instance).success

        def run(job: str, **config) -> dict:
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, run_config=config or None)
            assert result.success
            checks = {e.event_specific_data.check_name: e.event_specific_data.passed
                      for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
            mats = {e.event_specific_data.materialization.asset_key: e.event_specific_data.materialization.metadata
                    for e in result.all_events if e.is_step_materialization}
            return {"checks": checks, "mats": mats}

        paid = sim.mutate(payments=30)["payments"]  # every open invoice
        with Warehouse(app.warehouse).reader() as con:  # every one, however old (repoll_horizon: none)
            recent = [r[0] for r in con.execute(
                "SELECT invoice_id FROM main.invoices WHERE invoice_id IN (SELECT unnest(?))", [paid]).fetchall()]
            old = con.execute("SELECT count(*) FROM main.invoices WHERE invoice_id IN (SELECT unnest(?)) "
                              "AND greatest(due_date, invoice_date) < current_date - 365", [paid]).fetchone()[0]
        assert recent and old > 0  # debts older than a year converge too
        out = run("swo_repoll")
        assert out["checks"] == {"history_contiguous": True, "history_matches_invoices": True}
        assert out["mats"][repoll_asset_key("swo")]["changed"].value == len(recent)
        with Warehouse(app.warehouse).reader() as con:
            assert sorted(r[0] for r in con.execute(
                "SELECT invoice_id FROM main.invoice_history WHERE valid_to IS NOT NULL").fetchall()) == sorted(recent)

        gone = sim.mutate(deletes=1)["deleted"]
        out = run("swo_deletion_reconciliation")
        assert out["mats"][reconcile_asset_key("swo")]["deleted"].value == 1

        out = run("ar_aging_snapshot_daily", ops={"main__ar_aging_snapshot": {"config": {"snapshot_date": "2026-01-15"}}})
        assert out["mats"][AGING_KEY]["snapshot_date"].value == "2026-01-15"
        with Warehouse(app.warehouse).reader() as con:
            assert con.execute("SELECT count(*) FROM main.invoices WHERE is_deleted").fetchone()[0] == 1
            assert con.execute("SELECT invoice_id FROM main.invoices WHERE is_deleted").fetchone()[0] == gone[0]
            assert con.execute("SELECT count(*) FROM main.ar_aging_snapshot WHERE snapshot_date = DATE '2026-01-15'"
                               ).fetchone()[0] > 0


def test_repoll_in_the_run_that_loaded_skips_what_that_load_just_read(in_tmp: Path) -> None:
    from invoice_pipeline.sources.softwareone.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, config_file = write_app_config(in_tmp, {"swo": sim.source_config()})
        defs = build_definitions(app, str(config_file))
        instance = dg.DagsterInstance.ephemeral()

        def repoll_metadata(job: str, selection: list[dg.AssetKey] | None = None) -> dict:
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, asset_selection=selection)
            assert result.success
            return {k: v.value for k, v in result.asset_materializations_for_node("swo__open_invoices_repoll")[0]
                    .metadata.items()}

        # The CLI's run: load and re-poll in one job run. Everything open was read moments ago.
        first = repoll_metadata(ALL_ASSETS_JOB, [source_asset_key("swo"), repoll_asset_key("swo")])
        with Warehouse(app.warehouse).reader() as con:
            still_open = lifecycle.open_invoices(con, "swo", None, utc_now().date())
        assert still_open and first["skipped_just_loaded"] == len(still_open) and first["open_invoices"] == 0
        # A re-poll of its own (its cron, or automation after the load's run) reads them all.
        alone = repoll_metadata("swo_repoll")
        assert alone["open_invoices"] == len(still_open) and alone["skipped_just_loaded"] == 0
