"""What runs when: declarative automation of the conformed model and publish; the failure sensor's line."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType

from invoice_pipeline.config import parse_config
from invoice_pipeline.defs import build_definitions
from invoice_pipeline.defs.keys import CONFORMED_ASSET_KEYS, source_job_name
from invoice_pipeline.defs.schedules import failure_line, log_run_failures
from invoice_pipeline.audit import RULES

from .fake_source import fake_config_block

PUBLISHED = dg.AssetKey(["published", "warehouse"])


def _requested(defs: dg.Definitions, instance: dg.DagsterInstance, cursor=None) -> tuple[set[dg.AssetKey], object]:
    """Which of the conformed tables and the published snapshot one automation tick would run."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    watched = {*CONFORMED_ASSET_KEYS, PUBLISHED}
    return {r.key for r in result.results if r.true_subset.size > 0 and r.key in watched}, result.cursor


def test_conformed_refreshes_after_any_source_and_publish_only_after_blocking_checks(in_tmp: Path) -> None:
    app = parse_config({"sources": {"a": fake_config_block(), "b": fake_config_block()}})
    defs = build_definitions(app)
    with dg.instance_for_test() as instance:
        requested, cursor = _requested(defs, instance)
        assert requested == set()  # nothing landed yet: nothing to refresh

        # Source a lands; b has never run (new, or its API is down): the conformed model still refreshes.
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["a", "invoices"])))
        requested, cursor = _requested(defs, instance, cursor)
        assert requested == set(CONFORMED_ASSET_KEYS)

        # Everything publish reads is written, but the blocking checks have not passed: nothing is published.
        publish_deps = {dep.asset_key for spec in defs.resolve_assets_def(PUBLISHED).specs for dep in spec.deps}
        assert set(CONFORMED_ASSET_KEYS) <= publish_deps
        for key in publish_deps:
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        requested, cursor = _requested(defs, instance, cursor)
        assert PUBLISHED not in requested

        checks = [spec for c in defs.asset_checks or [] for spec in c.check_specs if spec.asset_key in publish_deps]
        failing = next(spec for spec in checks if spec.blocking and spec.asset_key == dg.AssetKey(["main", "invoices"]))
        assert {rule.name for rule in RULES if rule.blocking} <= {spec.name for spec in checks if spec.blocking}
        for spec in checks:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=spec.asset_key, check_name=spec.name, passed=spec is not failing))
        requested, cursor = _requested(defs, instance, cursor)
        assert PUBLISHED not in requested  # one blocking check failed

        for spec in checks:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=spec.asset_key, check_name=spec.name, passed=True))
        requested, _ = _requested(defs, instance, cursor)
        assert PUBLISHED in requested


def test_failure_sensor_logs_one_line_with_the_root_cause(in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = {**fake_config_block(), "username": "svc-user", "password": "s3cret-pass",  # nothing listens on port 9
            "max_retries": 0, "timeout": "2s"}
    doc = {"sources": {"acme": dead}, "warehouse": {"duckdb_path": str(in_tmp / "w.duckdb"),
           "published_path": str(in_tmp / "p.duckdb"), "parquet_dir": str(in_tmp / "parquet")}}
    config_file = in_tmp / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    defs = build_definitions(parse_config(doc), str(config_file))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(source_job_name("acme")).execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        failure = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records[0]
        context = dg.build_run_status_sensor_context(
            sensor_name="log_run_failures", dagster_event=failure.event_log_entry.dagster_event,
            dagster_instance=instance, dagster_run=run, repository_def=defs.get_repository_def(),
        ).for_run_failure()
        with caplog.at_level(logging.ERROR, logger="invoice_pipeline.sensors"):
            log_run_failures(context)
    lines = [r.getMessage() for r in caplog.records if r.name == "invoice_pipeline.sensors"]
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert line.startswith(f"run {result.run_id} of job acme_incremental (source acme) failed: step acme__invoices: ")
    cause = line.split("step acme__invoices: ", 1)[1]
    assert cause.startswith("SourceError: ") and "s3cret-pass" not in cause, cause
    assert "acme" in cause and ("127.0.0.1:9" in cause or "onnect" in cause), cause  # the API that is down


def test_failure_line_without_failed_steps_keeps_the_run_message() -> None:
    line = failure_line("r1", "invoice_pipeline_job", {}, "Execution of run failed:\n  code location unreachable", {})
    assert line == "run r1 of job invoice_pipeline_job failed: Execution of run failed: code location unreachable"
