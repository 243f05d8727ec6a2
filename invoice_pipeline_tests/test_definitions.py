"""The Dagster definitions load (with and without a config file) and materialize end to end."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from invoice_pipeline.defs import build_definitions
from invoice_pipeline.warehouse import Warehouse

from .conftest import write_app_config


def test_definitions_module_loads_without_config(in_tmp: Path) -> None:
    import importlib

    import invoice_pipeline.definitions as module

    defs = importlib.reload(module).defs
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"main/invoices", "main/invoice_lines", "published/warehouse"} <= keys
    assert any(k.endswith("/invoices") and not k.startswith("main") for k in keys)


def test_materialize_assets_against_simulator(in_tmp: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=40) as sim:
        app, config_file = write_app_config(in_tmp, {"agv": sim.source_config()})
        defs = build_definitions(app, str(config_file))
        dg.Definitions.validate_loadable(defs)
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
        assert result.success
        mats = {e.asset_key.to_user_string(): e for e in result.asset_materializations_for_node("agv__invoices")}
        meta = mats["agv/invoices"].metadata
        assert meta["invoices_loaded"].value == 40 and meta["api_calls"].value > 1
        checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert checks and all(e.event_specific_data.passed for e in checks)
        from invoice_pipeline.audit import RULES

        expected = {r.name for r in RULES} | {"sources_fresh", "no_quarantined_records", "history_contiguous",
                                              "history_matches_invoices", "schema_drift"}
        assert {e.event_specific_data.check_name for e in checks} == expected
        # every check of a table runs in one step (a UI run starts a process per step)
        assert {e.step_key for e in checks} == {"audit_checks", "history_checks", "agv__invoices"}
        assert Path(app.warehouse.published_path).exists()
        with Warehouse(app.warehouse).writer() as con:
            assert con.execute("SELECT count(*) FROM main.invoices").fetchone()[0] == 40


def test_schedules_sensors_and_jobs_per_source(in_tmp: Path) -> None:
    from invoice_pipeline.config import parse_config
    from .fake_source import fake_config_block

    app = parse_config({"sources": {"a": {**fake_config_block(), "schedule": "*/15 * * * *"}, "b": fake_config_block()}})
    defs = build_definitions(app)
    schedule = defs.resolve_schedule_def("a_schedule")
    assert schedule.cron_schedule == "*/15 * * * *" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_schedule_def("b_schedule").cron_schedule == "0 * * * *"
    assert defs.resolve_job_def("a_incremental") is not None
    assert defs.resolve_sensor_def("log_run_failures").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("conformed_and_publish_automation") is not None


def test_backfill_from_launchpad_config_keeps_cursor(in_tmp: Path) -> None:
    from invoice_pipeline.sources.agvance.simulator import SIMULATOR_CLASS

    with SIMULATOR_CLASS(size=30) as sim:
        app, config_file = write_app_config(in_tmp, {"agv": sim.source_config()})
        defs = build_definitions(app, str(config_file))
        job = defs.resolve_job_def("agv_incremental")
        instance = dg.DagsterInstance.ephemeral()
        assert job.execute_in_process(instance=instance).success
        with Warehouse(app.warehouse).writer() as con:
            cursor = con.execute("SELECT cursor_at FROM main._pipeline_cursors").fetchone()[0]
        run_config = {"ops": {"agv__invoices": {"config": {"backfill": {"start": "2024-01-01T00:00:00Z",
                                                                        "end": "2025-01-01T00:00:00Z"}}}}}
        result = job.execute_in_process(instance=instance, run_config=run_config)
        assert result.success
        meta = result.asset_materializations_for_node("agv__invoices")[0].metadata
        assert meta["mode"].value == "backfill" and meta["window_end"].value.startswith("2025-01-01")
        assert meta["invoices_extracted"].value > 0 and meta["invoices_loaded"].value == meta["invoices_extracted"].value
        with Warehouse(app.warehouse).writer() as con:
            assert con.execute("SELECT cursor_at FROM main._pipeline_cursors").fetchone()[0] == cursor
            assert con.execute("SELECT count(*) FROM main.invoices").fetchone()[0] == 30


def test_backfill_config_is_refused_before_the_run(in_tmp: Path) -> None:
    """A missing bound is refused by the launch config's schema (what the launchpad checks), naming the
    key; a bad date fails the run before any API call, naming the key and the expected form."""
    from .fake_source import fake_config_block

    app, config_file = write_app_config(in_tmp, {"fake": fake_config_block()})
    job = build_definitions(app, str(config_file)).resolve_job_def("fake_incremental")
    with pytest.raises(dg.DagsterInvalidConfigError, match="end"):
        dg.validate_run_config(job, {"ops": {"fake__invoices": {"config": {"backfill": {"start": "2024-03-01"}}}}})
    dg.validate_run_config(job, {"ops": {"fake__invoices": {"config": {"backfill": {"start": "a", "end": "b"}}}}})
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"ops": {"fake__invoices": {"config": {"backfill": {"start": "March 2024",
                                                                       "end": "2024-03-31T23:59:59Z"}}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "backfill.start: 'March 2024' is not an ISO-8601 timestamp" in str(failure.step_failure_data.error.to_string())


def test_a_run_that_cannot_set_up_says_why(in_tmp: Path) -> None:
    """The config file is checked before Dagster starts, but the run's resource loads it again: if it
    turned invalid in between, the CLI's report names the cause instead of failing with no message."""
    from invoice_pipeline.runner import run_pipeline

    from .fake_source import fake_config_block

    app, path = write_app_config(in_tmp, {"fake": fake_config_block()})
    path.write_text("sources: [unclosed")  # edited while the run was starting
    report = run_pipeline(app, str(path))
    assert not report.success
    assert any(f.startswith("setting up the run:") and "YAML" in f for f in report.failures), report.failures
