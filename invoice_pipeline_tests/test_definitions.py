"""The Dagster definitions load (with and without a config file) and materialize end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from invoice_pipeline.defs import build_definitions
from invoice_pipeline.warehouse import Warehouse

from .conftest import write_app_config


def test_definitions_module_loads_without_config(in_tmp: Path) -> None:
    """No config file: the code location shows the built-in simulators' sources (built when Dagster
    calls the `@dg.definitions` function, not at import)."""
    import invoice_pipeline.definitions as module

    defs = module.defs()
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"main/invoices", "main/invoice_lines", "published/warehouse"} <= keys
    assert any(k.endswith("/invoices") and not k.startswith("main") for k in keys)


def test_importing_the_code_location_touches_no_socket(in_tmp: Path) -> None:
    """Importing invoice_pipeline.definitions (no config file) binds, connects and starts nothing: a
    fresh interpreter in which any socket bind/connect/listen raises imports it and has one thread."""
    code = (
        "import socket, threading\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('socket touched while importing the code location')\n"
        "socket.socket.bind = socket.socket.connect = socket.socket.listen = refuse\n"
        "import invoice_pipeline.definitions as module\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "print(type(module.defs).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_PIPELINE_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=in_tmp, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "LazyDefinitions"
    assert not list(in_tmp.iterdir()) or {p.name for p in in_tmp.iterdir()} <= {"dagster_home"}


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
    """A missing bound, a bad date or bounds the wrong way round are refused by the config's own
    processing (what a launch runs before it creates a run), naming the key; a good window passes."""
    from .fake_source import fake_config_block

    app, config_file = write_app_config(in_tmp, {"fake": fake_config_block()})
    job = build_definitions(app, str(config_file)).resolve_job_def("fake_incremental")

    def config(**backfill: str) -> dict:
        return {"ops": {"fake__invoices": {"config": {"backfill": backfill}}}}

    with pytest.raises(dg.DagsterInvalidConfigError, match="end"):
        dg.validate_run_config(job, config(start="2024-03-01"))
    with pytest.raises(dg.DagsterInvalidConfigError,
                       match=r"(?s)fake__invoices:config:backfill:start.*'March 2024' is not an ISO-8601 timestamp"):
        dg.validate_run_config(job, config(start="March 2024", end="2024-03-31T23:59:59Z"))
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"(?s)backfill:end.*'2024-02-30' is not an ISO-8601"):
        dg.validate_run_config(job, config(start="2024-02-01", end="2024-02-30"))
    with pytest.raises(dg.DagsterInvalidConfigError, match="backfill.start 2024-04-01 is after backfill.end 2024-03-01"):
        dg.validate_run_config(job, config(start="2024-04-01", end="2024-03-01"))
    dg.validate_run_config(job, config(start="2024-03-01", end="2024-03-31T23:59:59+02:00"))
    dg.validate_run_config(job, {})


_LAUNCH = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) { __typename
  ... on PythonError { message } ... on RunConfigValidationInvalid { errors { message } }
  ... on LaunchRunSuccess { run { runId } } } }"""


def test_launchpad_refuses_a_bad_backfill_date_and_creates_no_run(in_tmp: Path, monkeypatch) -> None:
    """The launchpad's path: the webserver's GraphQL launch against the real code location (a code
    server process loading invoice_pipeline/definitions.py), as the Launch button does."""
    from dagster._core.test_utils import instance_for_test
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    import invoice_pipeline.definitions as code_location

    from .fake_source import fake_config_block

    _, config_file = write_app_config(in_tmp, {"fake": fake_config_block()})
    monkeypatch.setenv("INVOICE_PIPELINE_CONFIG", str(config_file))
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}  # records, never executes
    with instance_for_test(overrides={"run_launcher": launcher}) as instance, \
            define_out_of_process_context(code_location.__file__, "defs", instance) as context:
        location = context.code_locations[0].name
        selector = {"repositoryLocationName": location, "repositoryName": "__repository__",
                    "pipelineName": "fake_incremental"}

        def launch(start: str) -> dict:
            run_config = {"ops": {"fake__invoices": {"config": {"backfill": {"start": start, "end": "2024-03-31T23:59:59Z"}}}}}
            params = {"selector": selector, "runConfigData": run_config, "mode": "default"}
            return execute_dagster_graphql(context, _LAUNCH, {"p": params}).data["launchPipelineExecution"]

        refused = launch("March 2024")
        assert refused["__typename"] != "LaunchRunSuccess", refused
        assert "fake__invoices:config:backfill:start" in refused["message"], refused
        assert "'March 2024' is not an ISO-8601 timestamp (e.g. 2024-03-01T00:00:00Z)" in refused["message"]
        assert instance.get_runs() == []
        accepted = launch("2024-03-01T00:00:00Z")
        assert accepted["__typename"] == "LaunchRunSuccess", accepted
        assert [r.run_id for r in instance.get_runs()] == [accepted["run"]["runId"]]


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
